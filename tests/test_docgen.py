"""Tests of tpgraph.docgen and tpgraph.drawing: the generated reference cannot drift from the code.

When ``test_the_committed_files_are_up_to_date`` fails, someone changed the
public API, the command line or the configuration: run
``python -m tpgraph.docgen`` in the repository root and commit
``docs/reference/`` and ``docs/images/srn_credit_paths.png``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import sys
import textwrap
from pathlib import Path

import pytest

import tpgraph as tp
from tpgraph import docgen
from tpgraph.drawing import _blocked, draw_credit_paths, layered_positions, step_positions
from tpgraph.errors import GraphError

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
HOW = (f"regenerate them with `{docgen.REGENERATE}` in the repository root, then commit docs/reference/ "
       f"and {docgen.DRAWING}")


# ---------------------------------------------------------------------- the committed files
def test_the_committed_files_are_up_to_date():
    stale = docgen.stale_files(ROOT)
    if stale:
        diffs = []
        for rel in stale:
            if rel in docgen.PAGES and (ROOT / rel).is_file():
                old = (ROOT / rel).read_text(encoding="utf-8").splitlines()
                new = docgen.PAGES[rel]().splitlines()
                diffs += list(difflib.unified_diff(old, new, f"{rel} (committed)", f"{rel} (from the code)",
                                                   n=1, lineterm=""))[:40]
        pytest.fail(f"generated documentation is stale: {', '.join(stale)}; {HOW}.\n" + "\n".join(diffs))


def test_the_namespaces_include_the_public_packages():
    names = docgen.namespaces()
    assert names[0] == "tpgraph"
    for ns in ("tpgraph.train", "tpgraph.studies", "tpgraph.tasks", "tpgraph.models", "tpgraph.plots",
               "tpgraph.drawing"):
        assert ns in names
    for ns in names:  # each one declares what it exports
        assert isinstance(importlib.import_module(ns).__all__, (list, tuple)), ns


def test_every_public_name_is_documented():
    text = docgen.api_markdown()
    documented = docgen.documented_names(text)
    missing = [f"{ns}.{name}" for ns in docgen.namespaces() for name in importlib.import_module(ns).__all__
               if f"{ns}.{name}" not in documented]
    assert not missing, f"api.md leaves out {missing}; {HOW}"


# ---------------------------------------------------------------------- the API page on a made-up module
_MODULE = '''
"""A made-up module.

Its second paragraph is not in the reference.
"""

__all__ = ["Thing", "make", "LIMIT", "ALIAS"]

#: The largest size a thing may have.
LIMIT = 10


class Thing:
    """A thing with a ``size``.

    Parameters
    ----------
    size : int
        How big, at most :data:`LIMIT` (``<= 10``).
    name : str, optional
        Its name.
    """

    def __init__(self, size: "int", name: str = "x"):
        self.size = size

    def grow(self, by: int = 1) -> "Thing":
        """A bigger thing, by ``by``."""
        return Thing(self.size + by)

    @property
    def area(self) -> int:
        """Size times size."""
        return self.size ** 2

    def _hidden(self):
        """Not public."""


def make(size, *parts, strict=True, **options) -> Thing:
    """Make a :class:`~made.up.Thing` of ``size`` <with options>.

    Returns
    -------
    Thing
        The new thing.
    """
    return Thing(size)


ALIAS = make
'''


@pytest.fixture
def made_up(tmp_path, monkeypatch):
    (tmp_path / "docgen_made_up.py").write_text(textwrap.dedent(_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("docgen_made_up")
    sys.modules.pop("docgen_made_up", None)


def test_api_page_of_a_module(made_up):
    text = docgen.api_markdown(["docgen_made_up"])
    assert docgen.documented_names(text) == {f"docgen_made_up.{n}" for n in made_up.__all__}
    assert "Thing(size: int, name: str = 'x')" in text           # the constructor, forward refs unquoted
    assert "- `size` (int): How big, at most `LIMIT` (`<= 10`)." in text  # code spans are left as they are
    assert "- `name` (str, optional): Its name." in text
    assert "- `grow(by: int = 1) -> Thing`: A bigger thing, by `by`." in text
    assert "- `area` (property): Size times size." in text
    assert "_hidden" not in text
    assert "make(size, *parts, strict=True, **options) -> Thing" in text
    assert "Make a `Thing` of `size` &lt;with options>." in text
    assert "**Returns**" in text and "- Thing: The new thing." in text
    assert "_constant_, `int`: `10`" in text and "The largest size a thing may have." in text
    assert "- `docgen_made_up.ALIAS`: see [`docgen_made_up.make`](#docgen_made_upmake)" in text
    assert "second paragraph" not in text


def test_a_name_left_out_is_reported(made_up):
    text = docgen.api_markdown(["docgen_made_up"])
    cut = text.replace("#### `docgen_made_up.LIMIT`", "#### LIMIT")
    assert "docgen_made_up.LIMIT" not in docgen.documented_names(cut)


def test_signatures():
    def f(a, b: int = 2, /, c=3, *, d: "list[str]" = (), **kw) -> None:
        pass

    assert docgen.format_signature(f, "f") == "f(a, b: int = 2, /, c=3, *, d: list[str] = (), **kw) -> None"
    assert docgen.format_signature(len, "len") == "len(obj, /)"

    def g(kinds=frozenset({"b", "a", "c"}), hook=f):
        pass

    assert docgen.format_signature(g, "g") == "g(kinds=frozenset({'a', 'b', 'c'}), hook=<function " \
        "test_signatures.<locals>.f>)"  # the same text in every process: sorted sets, no addresses
    assert docgen.anchor("tpgraph.train.Trainer") == "tpgraphtraintrainer"
    assert docgen.anchor("tpgraph sweep") == "tpgraph-sweep"


# ---------------------------------------------------------------------- the CLI and config pages
def test_cli_page_has_every_command_and_option():
    from tpgraph.cli import build_parser

    text = docgen.cli_markdown()
    parser = build_parser()
    for name, sub in docgen._subcommands(parser):
        assert f"## tpgraph {name}\n" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, (name, flag)
    assert "## tpgraph\n" in text and "usage: tpgraph [-h] COMMAND" in text


def test_cli_page_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = docgen.cli_markdown()
    monkeypatch.setenv("COLUMNS", "250")
    assert docgen.cli_markdown() == narrow
    assert __import__("os").environ["COLUMNS"] == "250"  # restored


def test_config_page_has_every_key_with_its_default():
    from tpgraph.train.config import SECTIONS, Config, _toml_value

    text = docgen.config_markdown()
    defaults = Config().to_dict()
    for section, cls in SECTIONS.items():
        assert f"## {section}\n" in text
        for f in dataclasses.fields(cls):
            value = defaults[section].get(f.name, f.default)
            shown = "none" if value is None else _toml_value(value)
            assert f"| `{section}.{f.name}` | `{shown}` |" in text, (section, f.name)


# ---------------------------------------------------------------------- --check and writing
def test_check_lists_stale_files_and_write_fixes_them(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert docgen.REGENERATE in out
    for rel in [*docgen.PAGES, docgen.DRAWING]:
        assert rel in out
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    page = tmp_path / "docs/reference/config.md"
    page.write_text(page.read_text() + "\nedited by hand\n")
    assert docgen.stale_files(tmp_path) == ["docs/reference/config.md"]
    assert docgen.main(["--check", "--root", str(tmp_path / "nowhere")]) == 2


# ---------------------------------------------------------------------- the drawing
def _declared(graph):
    rules = {(u, v): d["rule"] for u, v, d in graph.nx.edges(data=True)}
    inverses = {(n.name, u): inv.weight for n in graph.nodes for u, inv in getattr(n, "inverses", {}).items()}
    return rules, inverses


@pytest.mark.parametrize("method", ["tp", "bptt"])
def test_drawing_of_the_srn_covers_every_edge(tmp_path, method):
    graph = tp.SRN(5, 8, 5, method=method).graph(4)
    drawn = draw_credit_paths(graph, tmp_path / "srn.png", pos="steps")
    rules, inverses = _declared(graph)
    assert drawn.rules == rules
    assert drawn.inverses == inverses and len(inverses) == 4
    assert set(drawn.colors) == set(rules.values())
    assert ("dtp" in drawn.colors) == (method == "tp")
    data = (tmp_path / "srn.png").read_bytes()
    assert data.startswith(PNG)
    assert docgen._png_description(tmp_path / "srn.png") == drawn.describe()


def test_drawing_of_a_custom_dag(tmp_path):
    g = tp.Graph("skip", dtype="float64")
    g.input("x", 4)
    g.index_input("label", 3)
    g.dense("h1", ["x"], 6, weights=["W1"], bias="b1", rules=["none"])
    g.dense("h2", ["h1"], 6, weights=["W2"], rules=["dtp"])
    g.dense("h3", ["h2", "h1"], 6, weights=["W3", "W_skip"], rules=["fa", "dtp"])
    g.add_inverse("h2", of="h1", weight="V2")
    g.add_inverse("h3", of="h1", weight="V3s", others="none")
    g.softmax_output("y", ["h3"], 3, weights=["W_out"])
    g.cross_entropy("loss", "y", "label")
    drawn = draw_credit_paths(g, tmp_path / "dag.png")
    rules, inverses = _declared(g)
    assert drawn.rules == rules and drawn.inverses == inverses
    assert set(drawn.colors) == {"none", "dtp", "fa", "gradient"}
    assert len(set(drawn.positions.values())) == len(g.nx)  # no two nodes on one spot
    pos = layered_positions(g)
    for u, v in g.nx.edges:
        assert pos[u][0] < pos[v][0]  # every edge goes left to right
    assert _blocked(pos, "h1", "h3") and not _blocked(pos, "h1", "h2")  # the skip edge bends around h2
    assert (tmp_path / "dag.png").read_bytes().startswith(PNG)
    # a networkx DiGraph works too, and steps positions refuse names they cannot place
    assert draw_credit_paths(g.nx, tmp_path / "nx.png").rules == rules
    with pytest.raises(GraphError, match="step_positions: node"):
        step_positions(g)


def test_drawing_refuses_a_cycle_and_other_files(tmp_path):
    g = tp.Graph("loop")
    g.input("x", 2)
    g.dense("a", ["x", "b"], 2, rules=["none", "gradient"])
    g.dense("b", ["a"], 2, rules=["gradient"])
    with pytest.raises(GraphError, match="cycle"):
        layered_positions(g)
    with pytest.raises(tp.TPGraphError, match="PNG"):
        draw_credit_paths(tp.build_srn(2, 3, 4, 3), tmp_path / "srn.svg")


# ---------------------------------------------------------------------- links
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(text: str) -> set[str]:
    return {docgen.anchor(m.replace("`", "")) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("rel", ["docs/index.md", "docs/concepts.md", *docgen.PAGES])
def test_links_resolve(rel):
    """Every relative link of the index, the concepts page and the generated pages reaches a file or heading."""
    path = ROOT / rel
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in _headings(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{rel}: broken links {broken}"
