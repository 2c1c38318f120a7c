"""Memory estimates and limits (tpgraph.memory): sizes, the limit's sources, refusing before allocating."""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.errors import ConfigError, MemoryLimitError
from tpgraph.memory import (MEMORY_ENV, MemoryEstimate, available_memory, check_memory, format_bytes,
                            memory_limit, parse_bytes)


@pytest.mark.parametrize("text, size", [
    ("8G", 8 * 2**30), ("8g", 8 * 2**30), ("8GiB", 8 * 2**30), ("8 GB", 8 * 2**30), ("512M", 512 * 2**20),
    ("1.5K", 1536), ("123", 123), ("2e9", 2 * 10**9), (4096, 4096), (1.0e6, 10**6), ("1T", 2**40),
])
def test_sizes_parse(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "0", "8X", True, None, [8], "nan"])
def test_bad_sizes_are_config_errors_naming_the_setting(bad):
    with pytest.raises(ConfigError, match="protocol.memory_limit"):
        parse_bytes(bad, "protocol.memory_limit")


def test_off_means_no_limit():
    assert parse_bytes("off") is None and parse_bytes("Unlimited") is None
    check_memory(MemoryEstimate({"float32": 2**62}), "anything", limit="off")


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 * 2**30, 2**50 * 3)] == \
        ["0 B", "1023 B", "1.5 KiB", "3.0 GiB", "3.0 PiB"]


def test_estimates_add_and_read():
    a = MemoryEstimate({"float32": 2**20}, structure=2**20)
    b = MemoryEstimate({"float32": 2**20, "int64": 2**10})
    c = a + b
    assert c.buffers == {"float32": 2**21, "int64": 2**10} and c.structure == 2**20
    assert c.total == 3 * 2**20 + 2**10
    assert a.scaled(3).total == 6 * 2**20
    assert str(c) == "3.0 MiB (float32 2.0 MiB, int64 1.0 KiB, graph and plan 1.0 MiB)"


def test_the_limit_comes_from_the_argument_then_the_environment_then_the_machine(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    avail = available_memory()
    assert avail is None or avail > 2**20  # this machine says, and has more than a MiB
    assert memory_limit() == (avail, "the memory available on this machine")
    monkeypatch.setenv(MEMORY_ENV, "3G")
    assert memory_limit() == (3 * 2**30, f"${MEMORY_ENV}")
    assert memory_limit("1M") == (2**20, "the memory_limit given")
    monkeypatch.setenv(MEMORY_ENV, "off")
    assert memory_limit()[0] is None


def test_refusal_names_what_the_estimate_and_the_limit():
    est = MemoryEstimate({"float32": 3 * 2**30}, structure=2**30)
    with pytest.raises(MemoryLimitError) as exc:
        check_memory(est, "the SRN at length 1000, batch size 20", limit="2G", hint="Ask for less.")
    msg = str(exc.value)
    for part in ("the SRN at length 1000, batch size 20", "4.0 GiB", "float32 3.0 GiB", "graph and plan 1.0 GiB",
                 "limit of 2.0 GiB", "the memory_limit given", "nothing was allocated", "Ask for less.", MEMORY_ENV):
        assert part in msg, (part, msg)
    assert exc.value.estimate == 4 * 2**30 and exc.value.limit == 2 * 2**30
    assert isinstance(exc.value, tp.TPGraphError)
    check_memory(est, "fits", limit="4G")  # equal to the limit: allowed


# ---------------------------------------------------------------- the SRN: estimates before building
@pytest.mark.parametrize("method", ["tp", "bptt"])
@pytest.mark.parametrize("many_to_many", [True, False])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_srn_estimate_extrapolates_exactly(method, many_to_many, noise):
    from tpgraph.engine import plan_memory
    from tpgraph.memory import STRUCTURE_BYTES_PER_NODE

    model = tp.SRN(5, 6, 4, method=method, many_to_many=many_to_many, noise_sigma=noise)
    for L in (1, 2, 3, 4, 9, 31):
        plan = tp.compile_plan(model.graph(L))
        est = model.estimate_memory(L, 7)
        assert est.buffers == plan_memory(plan, 7).buffers, L
        assert est.structure == len(plan.where) * STRUCTURE_BYTES_PER_NODE
        assert model.estimate_memory(L).buffers == {}
        # and what an engine then allocates is what was estimated
        eng = tp.Engine(plan)
        assert eng.estimate_memory(7).buffers == plan_memory(plan, 7).buffers


def test_a_length_that_cannot_fit_is_refused_before_its_graph_is_built(monkeypatch):
    import tpgraph.models.srn as srn_module

    model = tp.SRN(10, 128, 10)
    built = []
    declare = srn_module.build_srn

    def watching(length, *args, **kw):
        built.append(length)
        return declare(length, *args, **kw)

    monkeypatch.setattr(srn_module, "build_srn", watching)
    with pytest.raises(MemoryLimitError) as exc:
        model.engine(10**7, batch_size=20)
    msg = str(exc.value)
    assert "length 10000000" in msg and "batch size 20" in msg and "TiB" in msg, msg
    assert max(built, default=0) <= 3  # only the small probes were declared
    with pytest.raises(MemoryLimitError, match="length 10000000"):
        model.engine(10**7)  # the graph alone (116 GiB) does not fit either
    # an explicit cap refuses what would otherwise fit
    small = tp.SRN(10, 128, 10, memory_limit="1M")
    with pytest.raises(MemoryLimitError, match=r"limit of 1\.0 MiB \(the memory_limit given\)"):
        small.engine(200, batch_size=20)
    assert tp.SRN(10, 128, 10, memory_limit="off").engine(50, batch_size=20).plan is not None


def test_the_environment_variable_caps_every_engine(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "64K")
    model = tp.SRN(4, 8, 4)
    with pytest.raises(MemoryLimitError, match=r"\$TPGRAPH_MEMORY_LIMIT"):
        model.engine(500, batch_size=20)
    monkeypatch.setenv(MEMORY_ENV, "bogus")
    with pytest.raises(ConfigError, match=MEMORY_ENV):
        model.engine(5)
