"""Run configuration: a tree of dataclasses with the paper's protocol as defaults.

A configuration has six sections, each a dataclass:

``[task]``       which task and its options (copy memory, delay 5);
``[model]``      the SRN's size and number type;
``[method]``     target propagation or BPTT, credit rule, merge, ``alpha``;
``[optimizer]``  the optimiser and the learning rates ``lr_f``, ``lr_g``, ``lr_y``;
``[protocol]``   batches, validation, warm-up, seeds, abort rules;
``[output]``     where the run folder goes and how often to checkpoint.

Configurations come from TOML files (read with the standard library's
:mod:`tomllib`), with command-line overrides applied on top
(``--set protocol.n_batches=2000``). Every key has a default; an unknown key,
a wrong type or a value out of range raises
:class:`~tpgraph.errors.ConfigError` naming the key path (``protocol.batch_size``)
and what is allowed. :func:`to_toml` writes a resolved configuration back out,
and ``Config.from_dict(tomllib.loads(to_toml(c))) == c``.

Examples
--------
>>> cfg = Config.from_dict({"task": {"delay": 10}, "method": {"name": "bptt"}})
>>> cfg.task.delay, cfg.method.name, cfg.protocol.batch_size
(10, 'bptt', 20)
>>> cfg2 = apply_overrides(cfg, ["protocol.n_batches=2000"])
>>> cfg2.protocol.n_batches
2000
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

__all__ = [
    "Config", "TaskConfig", "ModelConfig", "MethodConfig", "OptimizerConfig", "ProtocolConfig",
    "OutputConfig", "SECTIONS", "load_config", "apply_overrides", "to_toml", "describe_keys",
]

_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (the inverse of :func:`_frozen`, for TOML and JSON)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    """Lists (from TOML or JSON) as tuples, recursively, so that a frozen config stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _opt(kind: type, default: Any, help: str, *, choices: Iterable[str] | None = None,
         minimum: float | None = None, above: float | None = None, below: float | None = None,
         nullable: bool = False):
    """A config field: its value type, default, one-line help and allowed range."""
    meta = {"kind": kind, "help": help, "choices": tuple(choices) if choices else None, "minimum": minimum,
            "above": above, "below": below, "nullable": nullable}
    return field(default=default, metadata=meta)


def _allowed(meta: Mapping) -> str:
    """Words describing the allowed values of a field."""
    if meta["choices"]:
        text = "one of " + ", ".join(repr(c) for c in meta["choices"])
    else:
        text = _KIND_NAMES[meta["kind"]]
        bounds = []
        if meta["minimum"] is not None:
            bounds.append(f">= {meta['minimum']:g}")
        if meta["above"] is not None:
            bounds.append(f"> {meta['above']:g}")
        if meta["below"] is not None:
            bounds.append(f"< {meta['below']:g}")
        if bounds:
            text += " " + " and ".join(bounds)
    if meta["nullable"]:
        text += ', or "none"'
    return text


def _check_value(path: str, meta: Mapping, value: Any) -> Any:
    """Validate one value against its field's metadata; return it normalised (ints to floats, ...)."""
    kind = meta["kind"]
    if meta["nullable"] and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is list:
        ok = isinstance(value, (list, tuple))
        if ok:
            value = _frozen(value)
    if not ok:
        raise ConfigError(f"{path} must be {_allowed(meta)}, got {value!r} ({type(value).__name__})")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{path} must be {_allowed(meta)}, got {value!r}")
    if kind in (int, float):
        if ((meta["minimum"] is not None and value < meta["minimum"])
                or (meta["above"] is not None and value <= meta["above"])
                or (meta["below"] is not None and value >= meta["below"])):
            raise ConfigError(f"{path} must be {_allowed(meta)}, got {value!r}")
    return value


def _task_names() -> tuple[str, ...]:
    from ..tasks import TASKS
    return tuple(sorted(TASKS))


def _srn_inverses() -> tuple[str, ...]:
    from ..models.srn import srn_inverses
    return srn_inverses()


def _optimizer_names() -> tuple[str, ...]:
    from ..optim import OPTIMIZERS
    return tuple(OPTIMIZERS)


@dataclass(frozen=True)
class TaskConfig:
    """``[task]``: the task and its options (NOTES.md gives the exact definitions)."""

    name: str = _opt(str, "copy_memory", "task: copy_memory, sequence_expansion, adding or temporal_order",
                     choices=_task_names())
    delay: int = _opt(int, 5, "copy memory: the delay T (sequences have length T + 20)", minimum=1)
    n_memorise: int = _opt(int, 10, "copy memory: number of symbols to memorise", minimum=1)
    n_symbols: int | None = _opt(int, None, "number of distinct symbols (none: the task's default, "
                                 "8 for copy memory, 4 for sequence expansion)", minimum=1, nullable=True)
    length: int | None = _opt(int, None, "sequence expansion, adding, temporal order: the sequence length T "
                              "(required there)", minimum=2, nullable=True)
    bits: int | None = _opt(int, None, "temporal order: number of relevant symbols, 2 (4 classes, the default) "
                            "or 3 (8 classes)", minimum=1, nullable=True)
    positions: list | None = _opt(list, None, "adding, temporal order: the ranges of the marked steps as "
                                  "[start, end] fractions of the length, e.g. [[0.1, 0.2], [0.4, 0.5]] (none: the "
                                  "task's default)", nullable=True)
    tolerance: float | None = _opt(float, None, "adding: largest absolute error of a right sequence "
                                   "(none: 0.04)", above=0.0, nullable=True)
    success_acc: float | None = _opt(float, None, "adding, temporal order: validation accuracy at which the "
                                     "task counts as solved (none: 0.99)", above=0.0, nullable=True)

    #: Which keys apply to which task (the others are left out of the written config).
    TASK_KEYS = {"copy_memory": ("delay", "n_memorise", "n_symbols"),
                 "sequence_expansion": ("length", "n_symbols"),
                 "adding": ("length", "positions", "tolerance", "success_acc"),
                 "temporal_order": ("length", "bits", "positions", "success_acc")}
    #: Tasks that need task.length.
    NEEDS_LENGTH = ("sequence_expansion", "adding", "temporal_order")

    def task_options(self) -> dict:
        """The keyword options of :func:`tpgraph.tasks.make_task` for this task."""
        opts = {k: getattr(self, k) for k in self.TASK_KEYS.get(self.name, ())}
        return {k: v for k, v in opts.items() if v is not None}

    #: Keys that are an error when set for a task that does not take them. (The older keys of
    #: copy memory and sequence expansion are left out silently, so that a copy-memory file can
    #: be switched to another task with --set task.name=...)
    STRICT_KEYS = ("bits", "positions", "tolerance", "success_acc")

    def foreign_keys(self) -> list[str]:
        """The :attr:`STRICT_KEYS` that are set but belong to other tasks than this one."""
        mine = set(self.relevant_keys())
        return [k for k in self.STRICT_KEYS if k not in mine and getattr(self, k) is not None]

    def relevant_keys(self) -> tuple[str, ...]:
        return ("name",) + self.TASK_KEYS.get(self.name, ())


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the simple recurrent network."""

    n_hidden: int = _opt(int, 128, "hidden units of the SRN", minimum=1)
    dtype: str = _opt(str, "float32", "number type of parameters and activations", choices=("float32", "float64"))
    many_to_many: bool = _opt(bool, True, "an output (and a loss) at every step; false: only at the last step "
                              "(many-to-one tasks, adding and temporal_order, always have only the last)")
    fast_tanh: bool = _opt(bool, True, "use the fast rational tanh for float32 (exact tanh otherwise)")


@dataclass(frozen=True)
class MethodConfig:
    """``[method]``: how credit is assigned."""

    name: str = _opt(str, "tp", "tp (target propagation) or bptt (backpropagation through time)",
                     choices=("tp", "bptt"))
    credit: str = _opt(str, "dtp", "TP's rule back in time: dtp (difference TP, Eq. 19), tp (Eq. 11) or fa "
                       "(feedback alignment: a fixed random matrix for W_h^T; no inverse, no warm-up) or dtp_after "
                       "(dtp with the step and the propagated displacements inverted apart and added after "
                       "inversion, Roulet & Harchaoui)", choices=("dtp", "tp", "fa", "dtp_after"))
    merge: str = _opt(str, "linear", "how targets meeting at a node are merged (linear: Eq. 22; mean; "
                      "or a name registered with tpgraph.register_merge)")
    clip: float | None = _opt(float, None, "merge \"clipped\": the largest Euclidean norm of a sample's merged "
                              "displacement (none: 1)", above=0.0, nullable=True)
    alpha: float = _opt(float, 1.0, "step size of the loss targets h - alpha dCE/dh (TP only; BPTT uses 1)",
                        above=0.0)
    noise_sigma: float = _opt(float, 0.0, "std of the Gaussian noise on h_{t-1} when training the inverse",
                              minimum=0.0)
    inverse_loss: str = _opt(str, "reconstruction", "the inverse's objective: reconstruction "
                             "(1/2 ||G(F(h + eps)) - (h + eps)||^2) or difference (the difference reconstruction "
                             "loss of Meulemans et al. 2020, 1/2 ||G(F(h + eps)) - G(F(h)) - eps||^2; needs "
                             "method.noise_sigma > 0), or jacobian (Ernoult et al. 2022: trains G's Jacobian "
                             "towards the transpose of F's, so that dtp's targets approach backpropagation's "
                             "steps; needs method.noise_sigma > 0; see tpgraph.nodes.Inverse), or a name "
                             "registered with tpgraph.register_inverse_loss")
    inverse: str = _opt(str, "learned", "TP's inverse G of the tanh layer: learned (V_h, c_h, trained after the "
                        "warm-up) or analytic (Roulet & Harchaoui: (W_h^T W_h + inverse_reg I)^-1 W_h^T (atanh(h_t) "
                        "- W_xh x_t - b_h) from the live W_h; no parameters, no training, no warm-up) or joint "
                        "(the learned inverse made many-to-one: G2(h_t, y_(t-1)) = tanh(V_h h_t + V_y y_(t-1) + "
                        "W_xh x_t + c_h) takes the targets of h_t and of the logits y_(t-1) at once and replaces "
                        "the linear merge; V_y trained with V_h, c_h; needs credit dtp or tp, the linear merge, an "
                        "output at every step; BPTT ignores it) or adjoint (G = V_h (h_t - h_t^3/3) + W_xh x_t + c_h, "
                        "trained like learned: its Jacobian V_h diag(1 - h_t^2) can equal the step's transpose "
                        "W_h^T diag(1 - h_t^2), the minimiser of inverse_loss jacobian) or adjoint_clamped (adjoint "
                        "with h_t clipped into [-1, 1] inside the features: the same for every state, flat for targets "
                        "outside tanh's range, where adjoint's h - h^3/3 turns back and grows)",
                        choices=_srn_inverses())
    inverse_reg: float = _opt(float, 0.1, "the analytic inverse's regularisation reg (its gain along any "
                              "direction is at most 1 / (2 sqrt(reg)), 1.58 at 0.1); ignored by the learned one",
                              above=0.0)
    truncate: int | None = _opt(int, None, "cut the credit back in time every this many steps (truncated TP; "
                                "truncated BPTT with name = bptt); none: never", minimum=1, nullable=True)
    reduction: str = _opt(str, "mean", "the cross-entropy over the batch: mean (the authors' convention: "
                          "per-sample step alpha / batch_size) or sum (per-sample step alpha)",
                          choices=("mean", "sum"))

    def trains_inverse(self) -> bool:
        """Whether the run trains an inverse: TP, a rule through the inverse (not fa), a learned one."""
        from ..inverses import get_inverse_kind
        from ..rules import get_rule

        return (self.name == "tp" and get_rule(self.credit).needs_inverse
                and (self.inverse == "joint" or get_inverse_kind(self.inverse).has_params))


@dataclass(frozen=True)
class OptimizerConfig:
    """``[optimizer]``: one optimiser for every parameter group, three learning rates."""

    name: str = _opt(str, "adam", "adam, sgd, momentum or nesterov", choices=_optimizer_names())
    lr_f: float = _opt(float, 1e-4, "learning rate of the forward weights W_xh, W_h, b_h", above=0.0)
    lr_g: float = _opt(float, 1e-3, "learning rate of the inverse V_h, c_h (TP only)", above=0.0)
    lr_y: float = _opt(float, 3e-3, "learning rate of the output layer W_hy, b_y", above=0.0)
    beta1: float = _opt(float, 0.9, "Adam: decay of the first moment", minimum=0.0, below=1.0)
    beta2: float = _opt(float, 0.999, "Adam: decay of the second moment", minimum=0.0, below=1.0)
    eps: float = _opt(float, 1e-8, "Adam: denominator offset", above=0.0)
    momentum: float = _opt(float, 0.9, "momentum and nesterov: the momentum", minimum=0.0, below=1.0)

    def options(self) -> dict:
        """The rule-specific options for :func:`tpgraph.optim.make_optimizer`."""
        if self.name == "adam":
            return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
        if self.name in ("momentum", "nesterov"):
            return {"momentum": self.momentum}
        return {}


@dataclass(frozen=True)
class ProtocolConfig:
    """``[protocol]``: the paper's training protocol."""

    batch_size: int = _opt(int, 20, "sequences per training batch (made on the fly)", minimum=1)
    n_batches: int = _opt(int, 25000, "training batches in all (the warm-up included)", minimum=1)
    val_batches: int = _opt(int, 500, "batches in the fixed validation set (of batch_size sequences)", minimum=1)
    val_every: int = _opt(int, 250, "validate every this many batches (and at the start and the end)",
                          minimum=1)
    warmup: int = _opt(int, 1000, "TP: the first batches train only the inverse (ignored by BPTT)", minimum=0)
    inverse_steps: int = _opt(int, 1, "TP: inverse updates per training batch: after the batch's step, "
                              "inverse_steps - 1 more inverse-only steps on the same batch, in the warm-up too "
                              "(ignored by BPTT and fa)", minimum=1)
    seed: int = _opt(int, 0, "seed of the initialisation, the training batches and the noise", minimum=0)
    val_seed: int = _opt(int, 12345, "seed of the validation set (made once)", minimum=0)
    memory_limit: str | None = _opt(
        str, None, "the most memory the run may take, e.g. '8G' or '512M' ('off': no check); a run that would "
        "take more is refused before it is built; none: $TPGRAPH_MEMORY_LIMIT, else the memory available",
        nullable=True)
    max_spectral_radius: float | None = _opt(
        float, None, "abort when the spectral radius of W_h or V_h passes this (TPTT used 20); none: never",
        above=0.0, nullable=True)
    early_stop_patience: int | None = _opt(
        int, None, "stop after this many validation points without a better validation loss; none: never",
        minimum=1, nullable=True)
    alignment_every: int = _opt(
        int, 0, "every this many batches, measure the angles between the updates and displacements and BPTT's "
        "gradient of the same batch (alignment.csv; costs about one TP plus one BPTT step per measurement, "
        "changes nothing in training); 0: never", minimum=0)
    rollback: float | None = _opt(
        float, None, "roll back to the last healthy validation point when a point is unhealthy: its validation "
        "loss is above this factor times the best, or its reconstruction or local loss above this factor times "
        "their recent median (both also above rollback_floor), or a loss or weight is not finite "
        "(tpgraph.train.stability); every learning rate is then multiplied by rollback_lr_decay; e.g. 10; "
        "none: off", above=1.0, nullable=True)
    rollback_lr_decay: float = _opt(float, 0.5, "rollback: the factor of every learning rate at each rollback, "
                                    "in (0, 1]", above=0.0)
    max_rollbacks: int = _opt(int, 5, "rollback: the most rollbacks; the next unhealthy point stops the run "
                              "(aborted, with the last healthy state restored)", minimum=1)
    rollback_window: int = _opt(int, 5, "rollback: the median of the reconstruction and local losses is over "
                                "this many last healthy points", minimum=1)
    rollback_floor: float = _opt(float, 0.05, "rollback: a validation, reconstruction or local loss at or below "
                                 "this is never a collapse", minimum=0.0)
    spectral_limit: float | None = _opt(
        float, None, "keep the spectral radius of W_h and V_h at most this by rescaling them (W <- W limit / rho) "
        "every spectral_every batches; unlike max_spectral_radius, which aborts; none: off", above=0.0,
        nullable=True)
    spectral_every: int = _opt(int, 10, "spectral_limit: check every this many batches (a cheap bound first, "
                               "the eigenvalues only when the bound passes the limit)", minimum=1)
    lr_warmup: int = _opt(int, 0, "after the inverse-only warm-up, ramp the forward and output learning rates "
                          "linearly over this many batches (the k-th uses lr k / lr_warmup); 0: off", minimum=0)
    lr_decay: str = _opt(str, "none", "decay the forward and output learning rates (not the inverse's, which keeps "
                         "up with the slowing forward weights) from protocol.lr_decay_start to the last batch, "
                         "where they reach lr_decay_final times their rate: 'cosine', 'linear' or 'none'",
                         choices=("none", "cosine", "linear"))
    lr_decay_start: int | None = _opt(int, None, "lr_decay: the batch after which the rates start to decay; "
                                      "none: at the end of the warm-ups (protocol.warmup for TP, plus lr_warmup)",
                                      minimum=0, nullable=True)
    lr_decay_final: float = _opt(float, 0.01, "lr_decay: the factor of the rates at the last batch, in (0, 1]",
                                 above=0.0)
    curriculum_start: int = _opt(int, 0, "train on shorter spans first (tpgraph.train.curriculum): the first value "
                                 "of the task's horizon option (task.length, or task.delay for copy memory), below "
                                 "the task's own; then + curriculum_step per stage up to the task's; 0: off",
                                 minimum=0)
    curriculum_step: int = _opt(int, 10, "curriculum: the horizon's increase from one stage to the next",
                                minimum=1)
    curriculum_fraction: float = _opt(float, 0.25, "curriculum: the fraction of protocol.n_batches in each "
                                      "shorter stage (the task's own gets the rest)", above=0.0, below=1.0)


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: the run folder and checkpoints."""

    runs_dir: str = _opt(str, "runs", "folder that receives one sub-folder per run")
    name: str | None = _opt(str, None, "the run folder's name (none: task-method-date-time)", nullable=True)
    checkpoint_every: int = _opt(int, 1000, "save a checkpoint every this many batches (0: only at the end)",
                                 minimum=0)
    plots: bool = _opt(bool, True, "draw the loss and spectral-radius plots at the end")


#: The sections of a configuration, in the order they are written.
SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "optimizer": OptimizerConfig,
    "protocol": ProtocolConfig,
    "output": OutputConfig,
}


def _fields(cls) -> dict:
    return {f.name: f for f in fields(cls)}


def _unknown(path: str, name: str, allowed: Iterable[str], what: str) -> ConfigError:
    allowed = list(allowed)
    hint = difflib.get_close_matches(name, allowed, n=1)
    prefix = path[: len(path) - len(name)]
    hint_text = f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
    return ConfigError(f"unknown {what} {path!r}{hint_text}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Config:
    """A whole run configuration (see the module docstring)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: Mapping) -> "Config":
        """Validate a nested mapping (as read from TOML) into a :class:`Config`.

        Raises
        ------
        ConfigError
            Naming the section or key path and the allowed values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a configuration must be a table of sections, got {type(data).__name__}")
        sections = {}
        for name, value in data.items():
            if name not in SECTIONS:
                raise _unknown(name, name, SECTIONS, "section")
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{name}] must be a table of keys (e.g. [{name}] then key = value lines), "
                                  f"got {value!r}")
        for name, section_cls in SECTIONS.items():
            given = data.get(name, {})
            known = _fields(section_cls)
            values = {}
            for key, value in given.items():
                path = f"{name}.{key}"
                if key not in known:
                    raise _unknown(path, key, known, "key")
                values[key] = _check_value(path, known[key].metadata, value)
            sections[name] = section_cls(**values)
        cfg = cls(**sections)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Cross-key checks: the task's options, the merge name, the warm-up."""
        from ..merges import known_merges
        from ..tasks import make_task

        t = self.task
        if t.name == "copy_memory" and t.length is not None:
            raise ConfigError("task.length is an option of sequence_expansion, adding and temporal_order; "
                              "copy_memory takes task.delay")
        if t.name in t.NEEDS_LENGTH and t.length is None:
            raise ConfigError(f"task.length is required for {t.name} (an integer >= 2)")
        foreign = t.foreign_keys()
        if foreign:
            owners = {k: [n for n, keys in t.TASK_KEYS.items() if k in keys] for k in foreign}
            k = foreign[0]
            raise ConfigError(f"task.{k} is an option of {' and '.join(owners[k]) or 'no task'}, not of {t.name}; "
                              f"{t.name} takes: {', '.join(t.TASK_KEYS.get(t.name, ()))}")
        try:
            task = make_task(t.name, **t.task_options())
        except ConfigError as exc:
            raise ConfigError(f"[task]: {exc}") from None
        from .curriculum import curriculum_stages

        p = self.protocol
        curriculum_stages(task, p.n_batches, p.curriculum_start, p.curriculum_step, p.curriculum_fraction)
        if self.protocol.memory_limit is not None:
            from ..memory import parse_bytes

            parse_bytes(self.protocol.memory_limit, "protocol.memory_limit")
        if self.method.merge not in known_merges():
            raise ConfigError(f"method.merge must be one of {', '.join(map(repr, known_merges()))}, "
                              f"got {self.method.merge!r}")
        from ..inverse_losses import get_inverse_loss, known_inverse_losses

        if self.method.inverse_loss not in known_inverse_losses():
            raise ConfigError(f"method.inverse_loss must be one of {', '.join(map(repr, known_inverse_losses()))}, "
                              f"got {self.method.inverse_loss!r}")
        if get_inverse_loss(self.method.inverse_loss).needs_noise and self.method.noise_sigma <= 0:
            raise ConfigError(f"method.inverse_loss = \"{self.method.inverse_loss}\" needs method.noise_sigma > 0 "
                              f"(got {self.method.noise_sigma:g}): without noise the loss is identically 0; set "
                              "method.noise_sigma or use method.inverse_loss = \"reconstruction\"")
        from ..rules import get_rule

        if p.rollback_lr_decay > 1.0:
            raise ConfigError(f"protocol.rollback_lr_decay must be in (0, 1] (a decay of the learning rates), "
                              f"got {p.rollback_lr_decay:g}")
        if p.lr_decay_final > 1.0:
            raise ConfigError(f"protocol.lr_decay_final must be in (0, 1] (the rates' factor at the last batch), "
                              f"got {p.lr_decay_final:g}")
        if p.lr_decay != "none" and p.lr_decay_start is not None and p.lr_decay_start >= p.n_batches:
            raise ConfigError(f"protocol.lr_decay_start ({p.lr_decay_start}) must be smaller than "
                              f"protocol.n_batches ({p.n_batches}): the rates would never decay")
        if self.method.inverse == "joint" and self.method.name == "tp":
            if not (get_rule(self.method.credit).needs_inverse and get_rule(self.method.credit).takes_context):
                raise ConfigError(f"method.inverse = \"joint\" proposes through the many-to-one inverse; "
                                  f"method.credit = {self.method.credit!r} does not: use dtp or tp")
            if self.method.merge != "linear" or self.method.clip is not None:
                raise ConfigError(f"method.inverse = \"joint\" replaces the merge at every h_t but the last; "
                                  f"method.merge must be \"linear\" (got {self.method.merge!r}"
                                  f"{', method.clip set' if self.method.clip is not None else ''})")
        if self.method.clip is not None and self.method.merge != "clipped":
            raise ConfigError(f"method.clip is the threshold of method.merge = \"clipped\"; method.merge is "
                              f"{self.method.merge!r}: set method.merge = \"clipped\" or leave method.clip out")
        if self.method.trains_inverse() and p.warmup >= p.n_batches:
            raise ConfigError(f"protocol.warmup ({p.warmup}) must be smaller than protocol.n_batches "
                              f"({p.n_batches}): TP would never train its forward weights")

    def to_dict(self) -> dict:
        """Nested plain dict; ``None`` values (no TOML equivalent) and keys of other tasks left out."""
        out = {}
        for name in SECTIONS:
            section = getattr(self, name)
            keys = section.relevant_keys() if isinstance(section, TaskConfig) else [f.name for f in fields(section)]
            out[name] = {k: _plain(getattr(section, k)) for k in keys if getattr(section, k) is not None}
        return out

    def with_method(self, name: str) -> "Config":
        """A copy with another ``method.name`` (TP and BPTT from the same everything else)."""
        return replace(self, method=replace(self.method, name=name))

    def summary_line(self) -> str:
        t = self.task
        task = ", ".join(f"{k}={v}" for k, v in t.task_options().items())
        return (f"{t.name}({task}) method={self.method.name} hidden={self.model.n_hidden} "
                f"batches={self.protocol.n_batches} seed={self.protocol.seed}")


# ---------------------------------------------------------------------- files and overrides
def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a TOML file (or start from the defaults) and apply ``KEY=VALUE`` overrides.

    Raises
    ------
    ConfigError
        If the file is missing or not valid TOML, or any key or value is invalid.
    """
    data = read_toml(path) if path is not None else {}
    data = _apply_to_dict(data, overrides)
    return Config.from_dict(data)


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A TOML file as a dict; a missing, unreadable or invalid file is a ConfigError naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """A new config with ``section.key=value`` assignments applied on top of ``config``."""
    return Config.from_dict(_apply_to_dict(config.to_dict(), overrides))


def _parse_value(path: str, meta: Mapping, raw: str) -> Any:
    """Turn an override's text into a value: TOML syntax, or the bare text for strings."""
    text = raw.strip()
    if meta["kind"] is str and not (len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"):
        return text
    if meta["nullable"] and text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if meta["kind"] is bool and text.lower() in ("true", "false", "yes", "no", "1", "0"):
            return text.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path} must be {_allowed(meta)}, got {raw!r}") from None


def _apply_to_dict(data: Mapping, overrides: Iterable[str]) -> dict:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"an override must look like section.key=value (e.g. protocol.n_batches=2000), "
                              f"got {item!r}")
        path, raw = item.split("=", 1)
        path = path.strip()
        if path.count(".") != 1:
            raise ConfigError(f"an override's key must be section.key (e.g. protocol.n_batches), got {path!r}")
        section, key = path.split(".")
        if section not in SECTIONS:
            raise _unknown(section, section, SECTIONS, "section")
        known = _fields(SECTIONS[section])
        if key not in known:
            raise _unknown(path, key, known, "key")
        value = _parse_value(path, known[key].metadata, raw)
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {target!r}")
        target[key] = value  # None only for nullable keys; checked with the rest by Config.from_dict
    return out


# ---------------------------------------------------------------------- writing TOML
def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)  # shortest text that reads back to the same float
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def to_toml(config: Config, header: str | None = None) -> str:
    """The configuration as TOML text (one table per section, keys in their declared order)."""
    lines = []
    if header:
        lines += [f"# {line}" if line else "#" for line in header.splitlines()]
        lines.append("")
    for name, values in config.to_dict().items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def describe_keys() -> str:
    """Every key with its default and help, for ``--help`` texts and docs."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in fields(cls):
            default = "none" if f.default is None else _toml_value(f.default) if f.default is not MISSING else "?"
            lines.append(f"  {f.name} = {default}  -- {f.metadata['help']}")
    return "\n".join(lines)
