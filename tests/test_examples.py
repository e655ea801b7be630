"""The examples/ run as documented: the nnsight example reproduces `abrupt analyze --only
patching`'s number for a head, and the quick-start notebook, the same cells as
examples/quickstart.py, executes end to end.

`python tests/test_examples.py` rewrites examples/quickstart.ipynb from examples/quickstart.py
(its `# %%` cells), so that the two never drift: edit the script, then regenerate.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "quickstart.py"
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def script_cells(text: str) -> list[tuple[str, str]]:
    """(kind, source) of each `# %%` cell of a percent-format script: markdown cells
    (`# %% [markdown]`) without their comment marks (`# `; a blank one is `#`), code cells as
    written."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            kind, lines = cells[-1]
            if kind == "markdown":
                line = line[2:] if line.startswith("# ") else line.removeprefix("#")
            lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def notebook_from_script():
    import nbformat

    nb = nbformat.v4.new_notebook()
    for i, (kind, source) in enumerate(script_cells(SCRIPT.read_text())):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(new(source, id=f"cell-{i}"))  # fixed ids: regenerating changes nothing
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def test_the_notebook_holds_the_scripts_cells():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    ours = [(c.cell_type, c.source) for c in nb.cells]
    assert ours == script_cells(SCRIPT.read_text()), (
        "examples/quickstart.ipynb differs from examples/quickstart.py: edit the script, then "
        "run `python tests/test_examples.py`"
    )
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _env() -> dict[str, str]:
    """This checkout's abrupt on one thread, for the notebook's kernel."""
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_the_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    """Trains mws to just after its drop, draws two figures, runs the progress analysis: ~40 s on
    one busy core (most of it training)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key, value in _env().items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the loss curve and the attention patterns are shown inline"
    text = "".join(o.get("text", "") for o in outputs)
    assert "'sudden': True" in text and "prog_attn_l0" in text and "half-way at step" in text
    run = tmp_path / "runs" / "quickstart"
    assert (run / "analysis" / "progress" / "results.json").exists()
    assert json.loads((run / "summary.json").read_text())["sudden"]


def test_the_nnsight_example_reproduces_the_patching_analysis(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnsight")
    from abrupt.cli import main

    run = tmp_path / "run"
    short = ["train.steps=10", "train.batch_size=16", "train.eval_size=32", "train.ckpt_every=10"]
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", *short]) == 0
    args = ["analyze", str(run), "--only", "patching", "--steps", "10", "--set", "patching.n=32"]
    assert main(args) == 0
    argv = ["nnsight_patching.py", str(run), "--layer", "1", "--head", "1", "--n", "32"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "nnsight_patching.py"), run_name="__main__")
    out = capsys.readouterr().out
    got = json.loads(out.splitlines()[-1])
    ours, theirs = got["nnsight"], got["abrupt analyze"]
    assert ours["step"] == 10 and theirs is not None
    for key in ("recovery_hidden", "recovery_observed"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=0), key
    results = json.loads((run / "analysis" / "patching" / "results.json").read_text())
    assert theirs["recovery_hidden"] == results["steps"]["10"]["per_head_recovery_hidden"][1][1]


if __name__ == "__main__":
    import nbformat

    nbformat.write(notebook_from_script(), NOTEBOOK)
    print(f"wrote {NOTEBOOK.relative_to(ROOT)}")
