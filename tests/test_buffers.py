"""tpgraph.buffers: the arrays of a plan at a batch size, and their size known before allocating."""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.buffers import Buffers, buffer_bytes
from tpgraph.plan import compile_plan


def _graphs():
    """The SRN in its variants, and DAGs with gathered inputs, adds, broadcasts and two interleaved chains."""
    out = {}
    for noise in (0.0, 0.2):
        for merge in ("linear", "mean"):
            for credit in ("dtp", "tp", "fa", "gradient"):
                for m2m in (True, False):
                    out[f"srn-{noise}-{merge}-{credit}-{m2m}"] = tp.build_srn(
                        5, 3, 4, 3, noise=noise, merge=merge, credit=credit, many_to_many=m2m)
    out["srn-real-linear"] = tp.build_srn(4, 3, 4, 2, inputs="real", output="linear")
    g = tp.Graph("interleaved", dtype="float64")
    g.input("x", 3)
    for i in range(6):
        g.dense(f"a{i}", ["x"] + ([f"a{i - 1}"] if i else []), 3, weights=["Wx"] + (["Wa"] if i else []), bias="b")
        g.dense(f"c{i}", [f"a{i}"] + ([f"c{i - 1}"] if i else []), 4, weights=["Wc"] + (["Wcc"] if i else []))
    g.add_node("s", ["c5", "c4"], merge="mean")
    g.input("t", 4)
    g.mse("L", "s", "t")
    out["interleaved"] = g
    g = tp.Graph("broadcast")
    g.index_input("k", 5)
    for i in range(4):
        g.dense(f"h{i}", ["k"], 3, weights=["W"], bias="b")
        g.softmax_output(f"y{i}", [f"h{i}"], 2, weights=["Wy"])
        g.index_input(f"l{i}", 2)
        g.cross_entropy(f"E{i}", f"y{i}", f"l{i}")
    out["broadcast"] = g
    return out


@pytest.mark.parametrize("stacking", [True, False])
def test_buffer_bytes_is_what_buffers_allocate(stacking):
    for name, g in _graphs().items():
        plan = compile_plan(g, stacking=stacking)
        for B in (1, 3, 20):
            assert buffer_bytes(plan, B, g.dtype) == Buffers(plan, B, g.dtype).nbytes, (name, B)


def test_buffer_bytes_is_affine_in_the_batch_size():
    plan = compile_plan(tp.build_srn(6, 3, 4, 3, noise=0.1))
    b1, b2, b5 = (buffer_bytes(plan, B, np.float32) for B in (1, 2, 5))
    for d in b1:
        assert b5[d] - b1[d] == 4 * (b2[d] - b1[d])
