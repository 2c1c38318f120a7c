"""Study specifications: what to search, how to judge a trial, how to split the budget.

A spec is a TOML file (or the same nested mapping from Python)::

    [study]
    name = "lr-search"                    # default: the spec file's stem
    base_config = "quick.toml"            # a run config, relative to the spec file (optional)
    trials = 20                           # trials per group
    seeds = 3                             # seeds 0, 1, 2 per trial (or a list: [0, 7, 9])
    objective = "best_val_loss"           # final_val_loss, best_seq_acc, final_seq_acc
    aggregate = "mean"                    # over the seeds: mean, median, min, max
    sampler = "tpe"                       # tpe, random, grid
    sampler_seed = 0
    pruner = "median"                     # none, median, successive_halving, hyperband
    pruner_options = { n_startup_trials = 5 }

    [base.protocol]                       # any run-config keys, on top of base_config
    n_batches = 3000

    [space]
    "optimizer.lr_f" = { type = "log_uniform", low = 1e-5, high = 1e-1 }
    "method.alpha"   = { type = "log_uniform", low = 1e-3, high = 1.0, when = { "method.name" = "tp" } }
    "model.n_hidden" = { type = "int", low = 32, high = 256, step = 32 }
    "method.merge"   = { type = "categorical", choices = ["linear", "mean"] }

    [groups]                              # one search per combination, each with the same budget
    "method.name" = ["tp", "bptt"]
    "task.delay" = [5, 10]

A parameter's ``when`` table restricts it to the groups whose values match (so
BPTT is not searched over TP-only keys). With ``sampler = "grid"`` every
searched float needs ``grid = [...]``; integers and categories are gridded by
their values. :func:`parse_spec` checks everything (unknown or misspelt keys,
``low >= high``, a log scale over a non-positive bound, values the run config
would refuse at either end of a range, a categorical value of the wrong type)
before any trial runs, and names the culprit.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..train.config import SECTIONS, Config, load_config, read_toml

__all__ = ["StudySpec", "Param", "Objective", "OBJECTIVES", "parse_spec", "load_spec", "group_slug"]

PARAM_TYPES = ("uniform", "log_uniform", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
AGGREGATES = ("mean", "median", "min", "max")
_STUDY_KEYS = ("name", "base_config", "trials", "seeds", "objective", "aggregate", "sampler", "sampler_seed",
               "pruner", "pruner_options", "description")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "grid", "when")
_TOP_KEYS = ("study", "base", "space", "groups")


@dataclass(frozen=True)
class Objective:
    """How one finished run is judged, and how its validation curve feeds a pruner.

    ``summary_path`` picks the value out of a run's ``summary.json``;
    ``curve`` is ``"running"`` when the pruner sees the best value so far
    (``best_*``) and ``"current"`` when it sees each point's value (``final_*``).
    """

    name: str
    direction: str          # "minimize" or "maximize"
    summary_path: tuple[str, str]
    column: str             # the metrics column the curve is made of
    curve: str              # "running" or "current"
    worst: float            # the value of a run whose result is not finite (diverged)

    def from_summary(self, summary: Mapping) -> float:
        """The objective's value of one run's summary (:attr:`worst` if it is missing or not finite)."""
        section, key = self.summary_path
        value = (summary.get(section) or {}).get(key)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return self.worst
        return float(value)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


OBJECTIVES: dict[str, Objective] = {
    "best_val_loss": Objective("best_val_loss", "minimize", ("best", "val_loss"), "val_loss", "running", math.inf),
    "final_val_loss": Objective("final_val_loss", "minimize", ("final", "val_loss"), "val_loss", "current",
                                math.inf),
    "best_seq_acc": Objective("best_seq_acc", "maximize", ("best", "seq_acc"), "seq_acc", "running", 0.0),
    "final_seq_acc": Objective("final_seq_acc", "maximize", ("final", "seq_acc"), "seq_acc", "current", 0.0),
}


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str                                  # "section.key"
    type: str                                 # one of PARAM_TYPES
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple = ()
    grid: tuple = ()
    when: tuple[tuple[str, Any], ...] = ()    # (key, value) pairs a group must match

    @property
    def log(self) -> bool:
        return self.type == "log_uniform"

    def applies_to(self, group: Mapping[str, Any]) -> bool:
        return all(group.get(k) == v for k, v in self.when)

    def grid_values(self) -> list:
        """The values a grid search visits."""
        if self.type == "categorical":
            return list(self.choices)
        if self.grid:
            return list(self.grid)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ConfigError(f"space.{self.key!r}: a grid search over a {self.type} parameter needs grid = [...]")

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class StudySpec:
    """A validated study specification (see the module docstring)."""

    name: str
    base: Config
    base_dict: dict
    space: tuple[Param, ...]
    groups: tuple[tuple[str, tuple], ...] = ()        # (key, values) in declared order
    trials: int = 20
    seeds: tuple[int, ...] = (0,)
    objective: Objective = OBJECTIVES["best_val_loss"]
    aggregate: str = "mean"
    sampler: str = "tpe"
    sampler_seed: int = 0
    pruner_name: str = "median"
    pruner_options: dict = field(default_factory=dict)
    description: str = ""
    source: dict = field(default_factory=dict)        # the spec as given (for the study folder and storage)

    def same_study(self, other: "StudySpec") -> bool:
        """Whether ``other`` describes the same study (what decides the trials; not the description)."""
        keys = ("name", "base", "space", "groups", "trials", "seeds", "objective", "aggregate", "sampler",
                "sampler_seed", "pruner_name", "pruner_options")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    # ------------------------------------------------------------------ groups
    def group_values(self) -> list[dict]:
        """Every combination of the group keys' values, in declared order ([{}] without groups)."""
        if not self.groups:
            return [{}]
        keys = [k for k, _ in self.groups]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.groups))]

    def params_for(self, group: Mapping[str, Any]) -> tuple[Param, ...]:
        return tuple(p for p in self.space if p.applies_to(group))

    def trials_for(self, group: Mapping[str, Any]) -> int:
        """The trial budget of one group (a grid never asks for more trials than it has points)."""
        if self.sampler != "grid":
            return self.trials
        size = math.prod(len(p.grid_values()) for p in self.params_for(group))
        return min(self.trials, size)

    def config_for(self, group: Mapping[str, Any], params: Mapping[str, Any], seed: int | None = None) -> Config:
        """The run config of one trial: the base, the group's values, the trial's params (and a seed)."""
        data = {k: dict(v) for k, v in self.base_dict.items()}
        for key, value in [*group.items(), *params.items()]:
            section, name = key.split(".")
            data.setdefault(section, {})[name] = value
        if seed is not None:
            data.setdefault("protocol", {})["seed"] = int(seed)
        return Config.from_dict(data)

    def optuna_name(self, group: Mapping[str, Any]) -> str:
        """The Optuna study name of one group inside the storage."""
        return self.name if not group else f"{self.name}/{group_slug(group)}"

    def curve_steps(self) -> int:
        """The pruner's resource: a trial reports at step ``seed_index * (n_batches + 1) + batch``."""
        return len(self.seeds) * (self.base.protocol.n_batches + 1)

    def pruner_args(self) -> tuple:
        """The arguments of :func:`make_pruner` for this study (plain data, for the workers)."""
        return (self.pruner_name, dict(self.pruner_options), self.curve_steps(),
                max(1, self.base.protocol.n_batches // 5))


def group_slug(group: Mapping[str, Any]) -> str:
    """A folder-safe name of a group: ``method.name=tp,task.delay=5`` -> ``name-tp_delay-5``."""
    if not group:
        return "all"
    parts = []
    for key, value in group.items():
        text = re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "x"
        parts.append(f"{key.split('.')[-1]}-{text}")
    return "_".join(parts)


# ---------------------------------------------------------------------- parsing
def _unknown(where: str, name: str, allowed: Sequence[str]) -> ConfigError:
    hint = difflib.get_close_matches(name, list(allowed), n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"unknown key {where}{name!r}{more}; allowed: {', '.join(allowed)}")


def _config_field(key: str, where: str):
    """The config field of a ``section.key`` string, or an error naming the key."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"{where}: {key!r} is not a config key of the form section.key (e.g. optimizer.lr_f)")
    section, name = key.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"{where}: {key!r} names no config section; "
                          f"sections: {', '.join(SECTIONS)}") from None
    known = {f.name: f for f in SECTIONS[section].__dataclass_fields__.values()}
    if name not in known:
        hint = difflib.get_close_matches(name, list(known), n=1)
        more = f" (did you mean {section + '.' + hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: unknown config key {key!r}{more}")
    return known[name]


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value


def _parse_param(key: str, entry: Any) -> Param:
    where = f"space.{key!r}"
    f = _config_field(key, "[space]")
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table such as {{ type = \"log_uniform\", low = 1e-5, high = 1e-1 }}, "
                          f"got {entry!r}")
    for k in entry:
        if k not in _PARAM_KEYS:
            raise _unknown(f"in {where}: ", k, _PARAM_KEYS)
    kind = entry.get("type")
    if kind is None:
        if "choices" in entry:
            kind = "categorical"
        elif entry.get("log") is True:
            kind = "log_uniform"
        else:
            raise ConfigError(f"{where} needs a type: one of {', '.join(PARAM_TYPES)}")
    if kind == "uniform" and entry.get("log") is True:
        kind = "log_uniform"
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    field_kind = f.metadata["kind"]
    when = entry.get("when", {})
    if not isinstance(when, Mapping):
        raise ConfigError(f"{where}: when must be a table of config keys and values, got {when!r}")
    for wk in when:
        _config_field(wk, f"{where} when")
    when_t = tuple((k, v) for k, v in when.items())
    grid = entry.get("grid", ())
    if not isinstance(grid, (list, tuple)):
        raise ConfigError(f"{where}: grid must be a list of values, got {grid!r}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: a categorical parameter needs a non-empty list choices = [...]")
        for k in ("low", "high", "step", "log"):
            if k in entry:
                raise ConfigError(f"{where}: {k} does not apply to a categorical parameter")
        return Param(key, kind, choices=tuple(choices), when=when_t)
    if "choices" in entry:
        raise ConfigError(f"{where}: choices apply to type = \"categorical\" only")
    if field_kind not in (int, float):
        raise ConfigError(f"{where}: {key} takes {field_kind.__name__} values; search it as type = \"categorical\"")
    if kind != "int" and field_kind is int:
        raise ConfigError(f"{where}: {key} is an integer key; search it with type = \"int\"")
    for k in ("low", "high"):
        if k not in entry:
            raise ConfigError(f"{where} needs {k}")
    low, high = _number(f"{where}.low", entry["low"]), _number(f"{where}.high", entry["high"])
    if not low < high:
        raise ConfigError(f"{where}: low ({low!r}) must be smaller than high ({high!r})")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got low = {low!r}")
    step = entry.get("step")
    if kind == "int":
        if entry.get("log") is True:
            raise ConfigError(f"{where}: log applies to uniform parameters (use type = \"log_uniform\")")
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{where}: an int parameter needs integer bounds, got {low!r}, {high!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ConfigError(f"{where}: step must be an integer >= 1, got {step!r}")
        low, high = int(low), int(high)
    elif step is not None:
        raise ConfigError(f"{where}: step applies to int parameters only")
    for i, v in enumerate(grid):
        v = _number(f"{where}.grid[{i}]", v)
        if not low <= v <= high:
            raise ConfigError(f"{where}: grid value {v!r} lies outside [{low!r}, {high!r}]")
    return Param(key, kind, low=low, high=high, step=step, grid=tuple(grid), when=when_t)


def parse_spec(data: Mapping, *, name: str | None = None, root: str | Path = ".") -> StudySpec:
    """Validate a spec mapping (as read from TOML) into a :class:`StudySpec`.

    ``root`` is the folder a relative ``base_config`` is read from. Every
    check runs here, before any trial: each group's config is built at both
    ends of every searched range (and with every categorical value), so a
    value the run config would refuse is reported now, naming the key.

    Raises
    ------
    ConfigError
        Naming the spec key or config key that is wrong.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a study spec must be a table, got {type(data).__name__}")
    for k in data:
        if k not in _TOP_KEYS:
            raise _unknown("", k, _TOP_KEYS)
    study = data.get("study", {})
    if not isinstance(study, Mapping):
        raise ConfigError("[study] must be a table of keys")
    for k in study:
        if k not in _STUDY_KEYS:
            raise _unknown("study.", k, _STUDY_KEYS)
    base_rel = study.get("base_config")
    base_dict: dict = {}
    if base_rel is not None:
        if not isinstance(base_rel, str):
            raise ConfigError(f"study.base_config must be a path, got {base_rel!r}")
        path = Path(base_rel)
        if not path.is_absolute():
            path = Path(root) / path
        try:
            base_dict = load_config(path).to_dict()
        except ConfigError as exc:
            raise ConfigError(f"study.base_config: {exc}") from None
    inline = data.get("base", {})
    if not isinstance(inline, Mapping):
        raise ConfigError("[base] must hold config sections, e.g. [base.protocol] then n_batches = 3000")
    for section, values in inline.items():
        if section not in SECTIONS:
            raise ConfigError(f"[base.{section}]: unknown config section; sections: {', '.join(SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[base.{section}] must be a table of keys")
        base_dict.setdefault(section, {}).update(values)
    try:
        base = Config.from_dict(base_dict)
    except ConfigError as exc:
        raise ConfigError(f"[base]: {exc}") from None
    base_dict = base.to_dict()

    sname = study.get("name", name)
    if not isinstance(sname, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", sname or ""):
        raise ConfigError(f"study.name must be a plain name (letters, digits, . _ -), got {sname!r}")

    def integer(key, default, minimum):
        v = study.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"study.{key} must be an integer >= {minimum}, got {v!r}")
        return v

    trials = integer("trials", 20, 1)
    sampler_seed = integer("sampler_seed", 0, 0)
    seeds_raw = study.get("seeds", 1)
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        if seeds_raw < 1:
            raise ConfigError(f"study.seeds must be a count >= 1 or a list of seeds, got {seeds_raw!r}")
        seeds = tuple(range(seeds_raw))
    elif isinstance(seeds_raw, list) and seeds_raw and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds_raw):
        if len(set(seeds_raw)) != len(seeds_raw):
            raise ConfigError(f"study.seeds lists a seed twice: {seeds_raw!r}")
        seeds = tuple(seeds_raw)
    else:
        raise ConfigError(f"study.seeds must be a count >= 1 or a list of seeds >= 0, got {seeds_raw!r}")

    def choice(key, default, allowed):
        v = study.get(key, default)
        if v not in allowed:
            raise ConfigError(f"study.{key} must be one of {', '.join(map(repr, allowed))}, got {v!r}")
        return v

    objective = OBJECTIVES[choice("objective", "best_val_loss", tuple(OBJECTIVES))]
    aggregate = choice("aggregate", "mean", AGGREGATES)
    sampler = choice("sampler", "tpe", SAMPLERS)
    pruner = choice("pruner", "median", PRUNERS)
    pruner_options = study.get("pruner_options", {})
    if not isinstance(pruner_options, Mapping):
        raise ConfigError("study.pruner_options must be a table")
    pruner_options = dict(pruner_options)
    make_pruner(pruner, pruner_options, 100, 10)  # unknown options are refused now, not on a worker

    space_raw = data.get("space", {})
    if not isinstance(space_raw, Mapping):
        raise ConfigError("[space] must be a table of config keys")
    space = tuple(_parse_param(k, v) for k, v in space_raw.items())
    if sampler == "grid":
        for p in space:
            p.grid_values()

    groups_raw = data.get("groups", {})
    if not isinstance(groups_raw, Mapping):
        raise ConfigError("[groups] must be a table of config keys and lists of values")
    groups = []
    for key, values in groups_raw.items():
        _config_field(key, "[groups]")
        if key in space_raw:
            raise ConfigError(f"[groups]: {key!r} is also searched in [space]; a key is either grouped or searched")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"groups.{key!r} must be a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"groups.{key!r} lists a value twice: {values!r}")
        groups.append((key, tuple(values)))

    spec = StudySpec(name=sname, base=base, base_dict=base_dict, space=space, groups=tuple(groups), trials=trials,
                     seeds=seeds, objective=objective, aggregate=aggregate, sampler=sampler,
                     sampler_seed=sampler_seed, pruner_name=pruner, pruner_options=pruner_options,
                     description=str(study.get("description", "")), source=_resolved_source(data, base_dict))
    _check_configs(spec)
    return spec


def _check_configs(spec: StudySpec) -> None:
    """Build every group's config at the ends of every range; the first refusal names the key.

    Each group's largest run (every searched integer at its upper end) is
    also checked against the memory limit, so a study that cannot fit is
    refused before its first trial, not by every trial on a worker.
    """
    from ..errors import MemoryLimitError
    from ..train.trainer import check_run_memory

    for group in spec.group_values():
        label = f"group {group}" if group else "the base"
        try:
            spec.config_for(group, {})
        except ConfigError as exc:
            raise ConfigError(f"[groups] {label}: {exc}") from None
        largest = {p.key: p.high for p in spec.params_for(group) if p.type == "int"}
        try:
            check_run_memory(spec.config_for(group, largest))
        except MemoryLimitError as exc:
            raise MemoryLimitError(f"{label}: {exc}", estimate=exc.estimate, limit=exc.limit) from None
        for p in spec.params_for(group):
            probes = list(p.choices) if p.type == "categorical" else [p.low, p.high, *p.grid]
            for v in probes:
                try:
                    spec.config_for(group, {p.key: v})
                except ConfigError as exc:
                    raise ConfigError(f"space.{p.key!r} = {v!r} ({label}): {exc}") from None


def _resolved_source(data: Mapping, base_dict: dict) -> dict:
    """The spec as given, with ``base_config`` replaced by the resolved base (so a study folder is self-contained)."""
    source = _plain(data)
    source["study"] = {k: v for k, v in source.get("study", {}).items() if k != "base_config"}
    source["base"] = _plain(base_dict)
    return source


def _plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file (its stem is the default study name)."""
    p = Path(path)
    data = read_toml(p, "study spec")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", p.stem).strip("-.") or "study"
    return parse_spec(data, name=name, root=p.parent)


# ---------------------------------------------------------------------- samplers and pruners
def make_sampler(spec: StudySpec, group: Mapping[str, Any], index: int = 0, resumed: int = 0):
    """The Optuna sampler of one group, seeded by ``sampler_seed``, the group's index and ``resumed``.

    ``resumed`` is the number of trials already in the storage when a session
    opens the study: a resumed session draws new parameters instead of
    repeating the first session's draws (a sampler's random state is not
    stored), and a study run without interruption is the same every time.
    """
    import numpy as np
    import optuna

    seed = spec.sampler_seed + index
    if resumed:
        seed = int(np.random.SeedSequence([spec.sampler_seed, index, resumed]).generate_state(1)[0])
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        space = {p.key: p.grid_values() for p in spec.params_for(group)}
        return optuna.samplers.GridSampler(space, seed=seed)
    n_startup = max(1, min(10, spec.trials_for(group) // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, constant_liar=True)


def make_pruner(name: str, options: Mapping[str, Any], max_resource: int, min_resource: int):
    """An Optuna pruner by name; ``options`` (its keyword arguments) override the defaults.

    Steps are training batches (``seed_index * (n_batches + 1) + batch``), so the
    defaults are in batches: the median pruner waits ``min_resource`` batches
    (a fifth of the first seed's run) before it prunes; successive halving and
    Hyperband start their first rung there.
    """
    import optuna

    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    kwargs = dict(options)
    if name == "median":
        kwargs.setdefault("n_warmup_steps", int(min_resource))
    elif name == "successive_halving":
        kwargs.setdefault("min_resource", max(1, int(min_resource)))
    elif name == "hyperband":
        kwargs.setdefault("min_resource", max(1, int(min_resource)))
        kwargs.setdefault("max_resource", max(int(min_resource) + 1, int(max_resource)))
    try:
        return classes[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"study.pruner_options for the {name} pruner: {exc}") from None
