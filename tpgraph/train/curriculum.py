"""A length curriculum: train on shorter credit spans first, then on the task's own.

Target propagation carries credit back in time through one learned inverse
per step, so a label ``L`` steps after the input it depends on gets its
credit through ``L`` approximate inversions. Where TP learns short spans
readily and long ones hardly at all (sequence expansion at T = 30 and 40), a
curriculum lets the recurrent weights learn the mechanism on short spans
before the long ones have to be reached, as curricula do for recurrent
networks trained by backpropagation (Zaremba & Sutskever, "Learning to
execute", 2014).

``protocol.curriculum_start`` (0: off) is the first value of the task's
:attr:`~tpgraph.tasks.Task.horizon` option (``length`` for sequence
expansion, adding and temporal order, ``delay`` for copy memory). Each stage
runs ``curriculum_fraction`` of ``protocol.n_batches`` batches; the next
stage adds ``curriculum_step``; the last stage, at the task's own value,
runs the batches that remain. With ``n_batches = 40000``, fraction 0.25,
start 20 and step 10, sequence expansion at T = 40 trains 10000 batches at
length 20, 10000 at 30 and 20000 at 40.

The model shares its parameters, optimisers and noise between the lengths
(:meth:`tpgraph.models.SRN.engine`), so a stage change only draws the next
batch from a longer task. Validation always runs on the task's own length;
the warm-up, the learning-rate schedules and the batch count run across the
stages unchanged, and a stage is a function of the batch number alone, so a
resumed run continues in the stage it left.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpgraph.errors import ConfigError
from tpgraph.tasks import Task

__all__ = ["Stage", "curriculum_stages"]


@dataclass(frozen=True)
class Stage:
    """A curriculum stage: batches ``first + 1 .. last`` (1-based) are drawn from ``task``."""

    first: int
    last: int
    task: Task

    @property
    def value(self) -> int:
        """int: The task's horizon option in this stage."""
        return self.task.horizon_value


def curriculum_stages(task: Task, n_batches: int, start: int, step: int, fraction: float) -> list[Stage]:
    """The stages of a run of ``n_batches`` on ``task``; one stage (the task itself) when ``start`` is 0.

    Raises
    ------
    ConfigError
        If ``start`` is not below the task's own horizon value, a shorter
        task cannot be built (its option validation names the value), or
        the shorter stages would take all the batches (the task itself must
        get at least one).
    """
    if not start:
        return [Stage(0, n_batches, task)]
    own = task.horizon_value
    key = f"task.{task.horizon}"
    if start >= own:
        raise ConfigError(f"protocol.curriculum_start ({start}) must be below the task's own {key} ({own}): the "
                          f"curriculum trains shorter spans first; 0 turns it off")
    values = list(range(start, own, step))
    per = int(fraction * n_batches)
    if per < 1 or per * len(values) >= n_batches:
        raise ConfigError(f"the curriculum's {len(values)} shorter stage(s) ({key} = "
                          f"{', '.join(map(str, values))}) of protocol.curriculum_fraction ({fraction:g}) x "
                          f"protocol.n_batches ({n_batches}) = {per} batches each leave "
                          f"{'no batch for a stage' if per < 1 else 'no batch for the task itself'}; lower the "
                          f"fraction, raise curriculum_start or curriculum_step, or add batches")
    stages = []
    for i, value in enumerate(values):
        try:
            shorter = task.with_horizon(value)
        except ConfigError as exc:
            raise ConfigError(f"protocol.curriculum_start/curriculum_step: the stage at {key} = {value}: {exc}") \
                from None
        stages.append(Stage(i * per, (i + 1) * per, shorter))
    stages.append(Stage(len(values) * per, n_batches, task))
    return stages
