"""The examples run and do what they say."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_graph_example_learns():
    mod = load("custom_graph")
    history = mod.main(steps=600, every=300, quiet=True)
    assert len(history) == 3
    assert history[-1] < 0.5 * history[0]


def test_custom_graph_merges_two_paths_at_h1():
    mod = load("custom_graph")
    g = mod.build_graph()
    import tpgraph as tp

    plan = tp.compile_plan(g)
    sid, k = plan.where["h1"]
    consumers = {plan.stacks[cs].members[ck] for cs, _, ck in plan.stacks[sid].incoming[k]}
    assert consumers == {"h2", "h3"}
