"""Tests of tpgraph.train.config: defaults, errors that name the key, overrides, the TOML round trip."""

import json
import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgraph.errors import ConfigError
from tpgraph.train.config import (SECTIONS, Config, apply_overrides, describe_keys, load_config, to_toml)


def test_defaults_follow_the_paper_protocol():
    c = Config()
    assert (c.task.name, c.task.delay, c.task.n_memorise) == ("copy_memory", 5, 10)
    assert c.model.n_hidden == 128 and c.model.dtype == "float32" and c.model.many_to_many
    assert c.method.name == "tp" and c.method.credit == "dtp" and c.method.merge == "linear"
    assert c.method.noise_sigma == 0.0
    assert c.optimizer.name == "adam" and (c.optimizer.beta1, c.optimizer.beta2) == (0.9, 0.999)
    p = c.protocol
    assert (p.batch_size, p.n_batches, p.val_batches, p.warmup) == (20, 25000, 500, 1000)
    assert p.max_spectral_radius is None and p.early_stop_patience is None
    Config.from_dict({}).check()


@pytest.mark.parametrize("data, words", [
    ({"protocol": {"batch_size": "twenty"}}, ["protocol.batch_size", "integer", "'twenty'"]),
    ({"protocol": {"batch_size": 0}}, ["protocol.batch_size", ">= 1"]),
    ({"protocol": {"batch_size": True}}, ["protocol.batch_size", "integer"]),
    ({"protocol": {"n_batches": 2.5}}, ["protocol.n_batches", "integer"]),
    ({"protocol": {"batchsize": 20}}, ["protocol.batchsize", "did you mean 'protocol.batch_size'", "n_batches"]),
    ({"optimizer": {"lr_f": -1e-3}}, ["optimizer.lr_f", "> 0"]),
    ({"optimizer": {"lr_f": "fast"}}, ["optimizer.lr_f", "a number"]),
    ({"optimizer": {"beta1": 1.0}}, ["optimizer.beta1", "< 1"]),
    ({"optimizer": {"name": "adamw"}}, ["optimizer.name", "'adam'", "'sgd'"]),
    ({"method": {"name": "backprop"}}, ["method.name", "'tp'", "'bptt'"]),
    ({"method": {"merge": "nope"}}, ["method.merge", "'linear'"]),
    ({"method": {"alpha": float("nan")}}, ["method.alpha"]),
    ({"model": {"dtype": "float16"}}, ["model.dtype", "'float32'"]),
    ({"model": {"many_to_many": "yes"}}, ["model.many_to_many", "true or false"]),
    ({"task": {"name": "copy"}}, ["task.name", "'copy_memory'"]),
    ({"task": {"delay": 0}}, ["task.delay", ">= 1"]),
    ({"task": {"name": "sequence_expansion"}}, ["task.length", "required"]),
    ({"task": {"length": 10}}, ["task.length", "sequence_expansion"]),
    ({"training": {"n": 1}}, ["'training'", "section", "protocol"]),
    ({"protocol": 5}, ["[protocol]", "table"]),
    ({"protocol": {"warmup": 100, "n_batches": 100}}, ["protocol.warmup", "protocol.n_batches"]),
    ({"output": {"checkpoint_every": -1}}, ["output.checkpoint_every", ">= 0"]),
    ({"protocol": {"memory_limit": "lots"}}, ["protocol.memory_limit", "'8G'", "'off'"]),
    ({"protocol": {"memory_limit": 8}}, ["protocol.memory_limit", "a string"]),
])
def test_errors_name_the_key_and_the_allowed_values(data, words):
    with pytest.raises(ConfigError) as err:
        Config.from_dict(data)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_bptt_ignores_the_warmup_check():
    c = Config.from_dict({"method": {"name": "bptt"}, "protocol": {"n_batches": 10}})
    assert c.protocol.warmup == 1000 and c.protocol.n_batches == 10


def test_overrides_parse_values_like_toml_and_strings_bare():
    c = apply_overrides(Config(), ["protocol.n_batches=2000", "method.name=bptt", "optimizer.lr_f=3e-4",
                                   "model.many_to_many=false", "protocol.max_spectral_radius=20",
                                   "output.name='my run'", "output.runs_dir=/tmp/x"])
    assert c.protocol.n_batches == 2000 and c.method.name == "bptt" and c.optimizer.lr_f == 3e-4
    assert c.model.many_to_many is False and c.protocol.max_spectral_radius == 20.0
    assert c.output.name == "my run" and c.output.runs_dir == "/tmp/x"
    assert apply_overrides(c, ["protocol.max_spectral_radius=none"]).protocol.max_spectral_radius is None


@pytest.mark.parametrize("item, words", [
    ("protocol.n_batches", ["section.key=value"]),
    ("n_batches=5", ["section.key"]),
    ("protocol.n_batchs=5", ["protocol.n_batchs", "did you mean 'protocol.n_batches'"]),
    ("protocol.n_batches=lots", ["protocol.n_batches", "'lots'"]),
    ("protocol.n_batches=-5", ["protocol.n_batches", ">= 1"]),
    ("protocol.n_batches=none", ["protocol.n_batches"]),
    ("prtocol.n_batches=5", ["'prtocol'", "did you mean 'protocol'"]),
])
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [item])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_toml_round_trip_of_a_full_config(tmp_path):
    c = apply_overrides(Config(), ["task.delay=12", "task.n_symbols=6", "method.name=bptt", "method.alpha=0.25",
                                   "optimizer.lr_f=1e-05", "optimizer.eps=1e-7", "protocol.max_spectral_radius=20",
                                   "protocol.early_stop_patience=3", 'output.name="a \\"quoted\\" név\\ttab"'])
    text = to_toml(c, header="a header\n\nwith lines")
    assert text.startswith("# a header\n#\n# with lines\n")
    assert Config.from_dict(tomllib.loads(text)) == c
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == c
    assert load_config(path, ["task.delay=7"]).task.delay == 7


def test_written_config_leaves_out_other_tasks_keys_and_none():
    c = Config.from_dict({"task": {"name": "sequence_expansion", "length": 9}})
    d = tomllib.loads(to_toml(c))
    assert d["task"] == {"name": "sequence_expansion", "length": 9}
    assert "max_spectral_radius" not in d["protocol"]
    assert Config.from_dict(d) == c


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_pos_float = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(name=_text, runs_dir=_text.filter(bool), lr=_pos_float, alpha=_pos_float,
       n=st.integers(min_value=1, max_value=10**9), rho=st.none() | _pos_float)
def test_toml_round_trip_property(name, runs_dir, lr, alpha, n, rho):
    data = {"output": {"name": name, "runs_dir": runs_dir}, "optimizer": {"lr_g": lr},
            "method": {"alpha": alpha}, "protocol": {"n_batches": n + 1000, "val_every": n}}
    if rho is not None:
        data["protocol"]["max_spectral_radius"] = rho
    c = Config.from_dict(data)
    assert Config.from_dict(tomllib.loads(to_toml(c))) == c


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[protocol]\nbatch_size = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[protocol]\nbatch_sise = 3\n")
    with pytest.raises(ConfigError, match="protocol.batch_sise"):
        load_config(typo)


def test_example_configs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "examples" / "configs"
    files = sorted(folder.glob("*.toml"))
    assert files, "examples/configs/*.toml missing"
    names = set()
    for f in files:
        c = load_config(f)
        names.add(c.task.name)
    assert names == {"copy_memory", "sequence_expansion"}


def test_describe_keys_lists_every_key():
    text = describe_keys()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        for key in cls.__dataclass_fields__:
            assert f"  {key} = " in text
    assert not math.isnan(Config().method.alpha)


# ---------------------------------------------------------------------- the long-range tasks
def test_long_range_task_keys_round_trip(tmp_path):
    c = load_config(None, ["task.name=temporal_order", "task.length=60", "task.bits=3",
                           "task.positions=[[0.1, 0.2], [0.3, 0.4], [0.6, 0.7]]", "task.success_acc=0.95"])
    assert c.task.task_options() == {"length": 60, "bits": 3, "success_acc": 0.95,
                                     "positions": ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7))}
    hash(c)  # a frozen config stays hashable with a list-valued key
    d = tomllib.loads(to_toml(c))
    assert d["task"] == {"name": "temporal_order", "length": 60, "bits": 3, "success_acc": 0.95,
                         "positions": [[0.1, 0.2], [0.3, 0.4], [0.6, 0.7]]}
    assert Config.from_dict(d) == c
    assert Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    a = load_config(None, ["task.name=adding", "task.length=100", "task.tolerance=0.05"])
    assert a.task.task_options() == {"length": 100, "tolerance": 0.05}
    assert tomllib.loads(to_toml(a))["task"] == {"name": "adding", "length": 100, "tolerance": 0.05}


def test_a_copy_memory_file_switches_to_a_long_range_task(tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "copy_memory_tp.toml"
    c = load_config(path, ["task.name=adding", "task.length=50"])
    assert c.task.task_options() == {"length": 50}


@pytest.mark.parametrize("sets,words", [
    (["task.name=adding"], ["task.length is required for adding"]),
    (["task.name=temporal_order"], ["task.length is required for temporal_order"]),
    (["task.name=adding", "task.length=50", "task.bits=3"],
     ["task.bits is an option of temporal_order, not of adding", "length, positions, tolerance, success_acc"]),
    (["task.delay=5", "task.tolerance=0.1"], ["task.tolerance is an option of adding, not of copy_memory"]),
    (["task.name=adding", "task.length=50", "task.positions=0.3"], ["task.positions must be a list"]),
    (["task.name=adding", "task.length=50", "task.positions=[[0.1, 0.2]]"], ["[task]", "'positions'", "2 [start"]),
    (["task.name=adding", "task.length=5"], ["[task]", "'positions'", "no time step at length 5"]),
    (["task.name=temporal_order", "task.length=50", "task.bits=5"], ["[task]", "'bits'", "no default"]),
    (["task.name=adding", "task.length=50", "task.tolerance=-1"], ["task.tolerance must be a number > 0"]),
])
def test_long_range_task_errors_name_the_key(sets, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
