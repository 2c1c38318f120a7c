"""The documentation's Python snippets run.

Every ```python block of README.md and docs/*.md is executed. The blocks of
one file run in order in one namespace (a later block may use an earlier
one's names), in a fresh interpreter whose working folder is a temporary
one (so that registries such as ``tp.register_merge`` and any files written
stay out of the other tests and of the repository). A block opts out with
an HTML comment ``<!-- no-test -->`` on the line before its fence: for
sketches that need the user's data, such as a run folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPT_OUT = "<!-- no-test -->"
_FENCE = re.compile(r"^(\s*)```python\s*$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(first line number, code, runs)`` of every ```python block of a Markdown text.

    ``runs`` is False for a block whose fence is preceded (blank lines
    aside) by ``<!-- no-test -->``. The code is dedented by its fence's
    indentation (blocks inside list items).
    """
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent = len(m.group(1))
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        runs = not (j >= 0 and lines[j].strip() == OPT_OUT)
        start = i + 1
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"line {start}: a ```python block is never closed")
        out.append((start + 1, "\n".join(body) + "\n", runs))
        i += 1
    return out


# Runs in the fresh interpreter: executes the given file's blocks in order in the namespace of
# __main__ (as a script would), each compiled with the Markdown file's line numbers so that a
# traceback points there. The code's file name is "<path>", not the path itself: code pasted from
# a page is not backed by a Python source file (Numba, for one, must not try to cache it there);
# linecache still shows the Markdown lines in tracebacks.
_RUNNER = r"""
import json, linecache, sys, traceback
import __main__
path, blocks = sys.argv[1], json.loads(sys.stdin.read())
name = f"<{path}>"
text = open(path, encoding="utf-8").read()
linecache.cache[name] = (len(text), None, text.splitlines(True), name)
namespace = __main__.__dict__
for line, code in blocks:
    print(f"--- {path}: block at line {line}", flush=True)
    try:
        exec(compile("\n" * (line - 1) + code, name, "exec"), namespace)
    except BaseException:
        traceback.print_exc()   # the Python printer reads linecache: the Markdown lines are shown
        sys.exit(1)
"""


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOCS, ids=_doc_id)
def test_snippets_run(path, tmp_path):
    import json

    blocks = [(line, code) for line, code, runs in python_blocks(path.read_text(encoding="utf-8")) if runs]
    if not blocks:
        pytest.skip(f"{_doc_id(path)} has no runnable python block")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(path)], input=json.dumps(blocks), text=True,
                          capture_output=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, f"a snippet of {_doc_id(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def test_the_tutorials_and_the_readme_have_runnable_snippets():
    for name in ("README.md", "docs/tutorial_custom_graph.md", "docs/tutorial_srn.md"):
        blocks = python_blocks((ROOT / name).read_text(encoding="utf-8"))
        assert sum(runs for _, _, runs in blocks) >= 1, name


def test_block_extraction():
    text = "\n".join([
        "# Title",                    # 1
        "```python",                  # 2
        "a = 1",                      # 3
        "```",                        # 4
        "<!-- no-test -->",           # 5
        "",                           # 6
        "```python",                  # 7
        "open('my_data.csv')",        # 8
        "```",                        # 9
        "* a list item:",             # 10
        "  ```python",                # 11
        "  b = a + 1",                # 12
        "  ```",                      # 13
        "```bash",                    # 14
        "echo not python",            # 15
        "```",                        # 16
    ])
    assert python_blocks(text) == [(3, "a = 1\n", True), (8, "open('my_data.csv')\n", False),
                                   (12, "b = a + 1\n", True)]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")


def test_a_failing_snippet_fails_with_its_file_and_line(tmp_path):
    import json

    doc = tmp_path / "bad.md"
    doc.write_text("text\n\n```python\nx = 1\n```\n\n```python\ny = x + undefined_name\n```\n")
    blocks = [(line, code) for line, code, runs in python_blocks(doc.read_text()) if runs]
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(doc)], input=json.dumps(blocks), text=True,
                          capture_output=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert f'File "<{doc}>", line 8' in proc.stderr and "y = x + undefined_name" in proc.stderr
