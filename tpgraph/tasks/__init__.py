"""Synthetic sequence tasks: copy memory, sequence expansion, and the long-range
adding and temporal-order problems.

Use :func:`make_task` to build a task from its registry name and options,
for example from a configuration file::

    task = make_task("copy_memory", delay=10)
    inputs, labels = task.batch(numpy.random.default_rng(0), 32)  # [30, 32] each
"""

from __future__ import annotations

import inspect

from tpgraph.errors import ConfigError
from tpgraph.tasks.adding import AddingTask
from tpgraph.tasks.base import Task, check_int_option, sequence_accuracy, step_accuracy, within_tolerance
from tpgraph.tasks.copy_memory import CopyMemoryTask
from tpgraph.tasks.sequence_expansion import SequenceExpansionTask
from tpgraph.tasks.temporal_order import TemporalOrderTask

__all__ = [
    "TASKS",
    "AddingTask",
    "CopyMemoryTask",
    "SequenceExpansionTask",
    "TemporalOrderTask",
    "Task",
    "check_int_option",
    "make_task",
    "sequence_accuracy",
    "step_accuracy",
    "within_tolerance",
]

#: Registry of the tasks: name -> class.
TASKS: dict[str, type[Task]] = {
    CopyMemoryTask.name: CopyMemoryTask,
    SequenceExpansionTask.name: SequenceExpansionTask,
    AddingTask.name: AddingTask,
    TemporalOrderTask.name: TemporalOrderTask,
}


def _accepted_options(cls: type[Task]) -> tuple[list[str], list[str]]:
    """Names of all and of required constructor options of ``cls``."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    accepted = [p.name for p in params]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    return accepted, required


def make_task(name: str, **options: object) -> Task:
    """Build a task from its registry name and options.

    Parameters
    ----------
    name : str
        A key of :data:`TASKS`: ``"copy_memory"``, ``"sequence_expansion"``,
        ``"adding"`` or ``"temporal_order"``.
    **options
        Constructor arguments of that task, e.g. ``delay=10`` for copy
        memory or ``length=20`` for sequence expansion, adding and temporal
        order.

    Returns
    -------
    Task
        The task. ``make_task(task.name, **task.options())`` rebuilds it.

    Raises
    ------
    ConfigError
        If ``name`` is not a known task (the message lists the known ones),
        an option is unknown or a required one is missing (the message lists
        the accepted ones), or an option value is invalid.

    Examples
    --------
    >>> make_task("sequence_expansion", length=8)
    SequenceExpansionTask(length=8, n_symbols=4)
    """
    known = sorted(TASKS)
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"unknown task name {name!r}; known tasks are: {', '.join(known)}")
    cls = TASKS[name]
    accepted, required = _accepted_options(cls)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ConfigError(
            f"task {name!r}: unknown option(s) {', '.join(repr(k) for k in unknown)}; "
            f"accepted options are: {', '.join(accepted)}"
        )
    missing = [k for k in required if k not in options]
    if missing:
        raise ConfigError(
            f"task {name!r}: missing required option(s) {', '.join(repr(k) for k in missing)}; "
            f"accepted options are: {', '.join(accepted)}"
        )
    return cls(**options)
