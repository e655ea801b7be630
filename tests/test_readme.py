"""The README holds: its quick start and every command of its commands table run, on the README's
own `small` run made short; every path it links or names exists in the repository; its count of
analyses is the registry's.

Substitutions, so that the whole table runs in about a minute (each is what a reader would type to
try the command quickly; none changes what the command does):
- a fresh training gets `TRAIN_SHORT` (a few steps, small batches); the quick start's `runs/small`,
  which the table's RUN and DIR stand for, is also narrower (`SMALL_NARROW`: width 16, same 4x4
  data, 4 layers and 4 heads, so every row, column and head the examples name exists) and logs the
  progress measures (the table's `--only progress` needs them);
- metavariables: NAME -> small, N -> 1 (a seed), 10 more steps (train.steps) or RUN's last
  checkpoint (--step), PRE,POST and LAST -> checkpoints of RUN, OUT -> a scratch folder, DIR ->
  RUN (forecast's: the folder holding RUN and the quick start's other runs);
- `[optional parts]` are included (they are the examples), except those holding `...`, which are
  syntax; `a\\|b` alternatives take the first; a bare `...` (and a flag left without its value) is
  dropped;
- analyses and baselines run on fewer matrices (`ANALYSIS_N` via `--set NAME.n=`, `--n` for
  compare and ood, `--n 64` for baseline); `--steps 5000` of components becomes 2.
Not run here: `pip install` and `pytest` (set-up and this suite), the GPU script (needs CUDA; its
CPU `--smoke` form is tests/test_gpu_script.py) and the `abrupt sweep ...` placeholder (the sweep
commands are tests/test_sweep.py's). A row that says it needs an extra (`needs pip install
'abrupt[EXTRA]'`, which the quick start's set-up leaves out) runs in a test of its own, skipped
where that extra is not installed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from abrupt.analysis.registry import discover
from abrupt.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

TRAIN_SHORT = [
    "train.steps=4",
    "train.batch_size=8",
    "train.eval_size=32",
    "train.log_every=2",
    "train.ckpt_every=2",
]
SMALL_NARROW = [
    "train.steps=20",
    "train.batch_size=16",
    "train.eval_size=64",
    "train.log_every=5",
    "train.ckpt_every=10",
    "train.ckpt_log_points=0",
    "model.width=16",
    "model.mlp=32",
    "train.progress=true",
]
ANALYSIS_N = {
    "copying": 16,
    "attention": 16,
    "probe": 64,
    "embeddings": 16,
    "patching": 8,
    "ablation": 8,
    "switching": 8,
    "compare": 8,
    "ood": 4,
}
SMALL_RUN = "abrupt train --preset small --out runs/small"  # the quick start's, the table's RUN
NOT_RUN = (
    "python3 -m pip",
    "python3 -m pytest",
    "PYTHONPATH=src python benchmarks/gpu_paper.py",
    "abrupt sweep ...",
)


def section(title: str, text: str = README) -> str:
    """The text (the README's by default) from the heading `title` to the next heading of the same
    or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"no section '{title}'"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end() :], re.M)
    return text[match.end() : match.end() + end.start() if end else None]


def quick_start() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", section("Quick start"), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


# how a row of the commands table says it needs an extra the quick start's set-up does not install
NEEDS = re.compile(r"needs `pip install 'abrupt\[(\w+)\]'`")


def table_commands(extra: str | None = None) -> list[str]:
    """Each code span of the commands table's second column that is a command, in the rows that
    need `extra` (None: in the rows that need none)."""
    rows = [
        line
        for line in section("Commands").splitlines()
        if line.startswith("| ") and not line.startswith("| what")
    ]
    needs = [NEEDS.search(row) for row in rows]
    cells = [
        re.split(r"(?<!\\)\|", row)[2]
        for row, need in zip(rows, needs)
        if extra == (need.group(1) if need else None)
    ]
    return [
        span
        for cell in cells
        for span in re.findall(r"`([^`]+)`", cell)
        if span.startswith(("abrupt ", "PYTHONPATH="))
    ]


def extras_needed() -> list[str]:
    """The extras rows of the commands table need."""
    return sorted(set(NEEDS.findall(section("Commands"))))


def expand(command: str, run: str, fresh: str, steps: list[int]) -> list[str]:
    """The argument list that runs `command` (see the module docstring), without the leading
    `abrupt`."""
    command = re.sub(r"\[[^\[\]]*\.\.\.[^\[\]]*\]", "", command)  # optional syntax placeholders
    command = re.sub(r"\[([^\[\]]*)\]", r"\1", command)  # optional examples: included
    command = re.sub(r"(\S+?)\\\|\S+", r"\1", command)  # a\|b: a
    words = shlex.split(command)[1:]
    out: list[str] = []
    for i, word in enumerate(words):
        if word == "...":
            if out and out[-1].startswith("--"):
                out.pop()
            continue
        prev = words[i - 1] if i else ""
        names = {"NAME": "small", "RUN": run, "OUT": fresh}
        if steps:  # checkpoints of RUN (none before the quick start has made it)
            names.update({"PRE,POST": f"{steps[1]},{steps[-1]}", "LAST": str(steps[-1])})
        word = names.get(word, word)
        if word == "DIR" and prev == "--out":
            word = fresh
        elif word == "DIR":  # forecast's: a folder of runs (RUN, also found in it, counts once)
            word = str(Path(run).parent) if words[0] == "forecast" else run
        if word == "N" and prev == "--seed":
            word = "1"
        if word == "N" and prev == "--step":
            word = str(steps[-1])
        if word == "train.steps=N":
            word = f"train.steps={steps[-1] + 10}"
        if prev == "--steps" and words[0] == "components":
            word = "2"
        if prev == "--n" and words[0] == "baseline":
            word = "64"
        out.append(word)
    if out[0] == "train" and "--resume" not in out:
        out += TRAIN_SHORT
    if out[0] == "analyze":
        only = out[out.index("--only") + 1].split(",") if "--only" in out else list(ANALYSIS_N)
        out += [
            x
            for name in only
            if name in ANALYSIS_N and f"{name}.n=" not in " ".join(out)
            for x in ("--set", f"{name}.n={ANALYSIS_N[name]}")
        ]
    if out[0] in ("compare", "ood"):
        out += ["--n", str(ANALYSIS_N[out[0]])]
    return out


def run_commands(commands: list[str], tmp_path: Path) -> int:
    """Run each README command (see the module docstring) in the current folder; returns how many
    ran (those in NOT_RUN do not)."""
    ran = 0
    for i, command in enumerate(commands):
        if command.startswith(NOT_RUN):
            continue
        if command == SMALL_RUN:  # the quick start's run: RUN below
            args = shlex.split(command)[1:] + SMALL_NARROW
        else:
            steps = sorted(
                int(p.stem.removeprefix("step_"))
                for p in Path("runs/small/checkpoints").glob("step_*.json")
            )
            args = expand(command, "runs/small", str(tmp_path / f"fresh{i}"), steps)
        assert main(args) == 0, (
            f"README command failed: {command}\n  ran as: abrupt {shlex.join(args)}"
        )
        ran += 1
    return ran


def test_quick_start_and_every_command_of_the_table_run_on_the_readmes_own_run(
    tmp_path, monkeypatch
):
    """Every command but those of the rows that need an extra the quick start's set-up does not
    install (the next test's)."""
    monkeypatch.chdir(tmp_path)  # the README's relative paths (runs/small) land here
    commands = quick_start() + table_commands()
    assert len(commands) >= 25 and any("--only attention" in c for c in commands)
    assert SMALL_RUN in commands
    ran = run_commands(commands, tmp_path)
    assert ran == len(commands) - len([c for c in commands if c.startswith(NOT_RUN)])


@pytest.mark.extra
@pytest.mark.parametrize("extra", extras_needed())
def test_the_tables_commands_that_need_an_extra_run_with_it(extra, tmp_path, monkeypatch):
    """The rows that say `needs pip install 'abrupt[EXTRA]'`, on the quick start's run: skipped,
    with that command, where the extra is not installed (the quick start's set-up leaves it
    out)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"][extra]:
        module = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].replace("-", "_")
        pytest.importorskip(module, reason=f"needs pip install 'abrupt[{extra}]'")
    monkeypatch.chdir(tmp_path)
    commands = table_commands(extra)
    assert commands and run_commands([SMALL_RUN, *commands], tmp_path) == len(commands) + 1


def _tracked() -> set[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell tracked files from ignored ones")
    return set(out.splitlines())


def _exists(path: str, tracked: set[str]) -> bool:
    path = path.rstrip("/")
    return path in tracked or any(t.startswith(path + "/") for t in tracked)


def test_every_path_the_readme_links_or_names_is_in_the_repository():
    tracked = _tracked()
    slugs = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", README, re.M)
    }
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README):  # markdown links and images
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            if target[1:] not in slugs:
                missing.append(target)
        elif not _exists(target.split("#")[0], tracked):
            missing.append(target)
    for span in re.findall(
        r"`((?:docs|src|tests|benchmarks|\.ci)/[^`\s]*)`", README
    ):  # paths named in code
        if not re.search(r"[*<>]|[A-Z]{3,}\.py", span) and not _exists(span, tracked):
            missing.append(span)
    assert not missing, f"README links or names paths that are not in the repository: {missing}"


def test_the_readme_counts_and_names_the_registrys_analyses():
    words = {7: "seven", 8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
    match = re.search(r"runs all (\w+) analyses \(([^)]*)\)", " ".join(README.split()))
    assert match, "README no longer says how many analyses `abrupt analyze RUN` runs"
    names = [n for n, m in discover().items() if not getattr(m, "ON_REQUEST", False)]
    assert match.group(1) == words.get(len(names), str(len(names)))
    assert [n.strip() for n in match.group(2).split(",")] == names


def test_one_glossary_of_transition_terms_and_the_plot_uses_its_words():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from abrupt.dynamics.transition import summarize
    from abrupt.plots import _draw_losses
    from abrupt.report import _transition

    glossary = section("Transition terms", (ROOT / "docs" / "run-directory.md").read_text())
    terms = set(re.findall(r"^\| `([^`]+)`", glossary, re.M)) | set(
        re.findall(r"`(fall_\w+)`", glossary)
    )
    rows = [
        {
            "step": s,
            "eval_loss": 0.1,
            "eval_loss_obs": 0.0,
            "eval_loss_mask": 0.11 if s < 500 else 0.04,
        }
        for s in range(0, 1000, 10)
    ]
    summary = summarize(rows)
    assert (
        summary["drop_step"] is not None and not summary["dropped"]
    )  # halved, but not 10x below: no drop drawn
    described = {
        k for k in summary if k not in ("final_loss", "final_level", "steps", "seconds", "detector")
    }
    assert described <= terms, (
        "summary.json fields missing from docs/run-directory.md's glossary: "
        f"{sorted(described - terms)}"
    )
    fig, ax = plt.subplots()
    _draw_losses(ax, rows, summary)
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert f"escape_step {summary['escape_step']}" in labels and not any(
        "drop" in label for label in labels
    )
    text = _transition(summary, "L_mask")
    assert f"escape_step {summary['escape_step']}" in text and "dropped no" in text
    dropped = {**summary, "dropped": True}
    fig, ax = plt.subplots()
    _draw_losses(ax, rows, dropped)
    assert f"drop_step {summary['drop_step']} (dropped)" in ax.get_legend_handles_labels()[1]
    plt.close(fig)


# the pages of the README's documentation map (its "## Documentation" table)
DOC_PAGES = tuple(
    re.findall(
        r"^\| \[[^]]+\]\(docs/([^)]+)\.md\)",
        README.split("## Documentation")[1].split("\n## ")[0],
        re.M,
    )
)


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_link_of_the_docs_pages_resolves(page):
    """The pages the README's documentation map names: links relative to docs/, anchors to
    headings."""
    tracked = _tracked()
    path = ROOT / "docs" / f"{page}.md"
    text = path.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        doc = (path.parent / file).resolve() if file else path
        rel = doc.relative_to(ROOT).as_posix() if doc.is_relative_to(ROOT) else str(doc)
        if file and not _exists(rel, tracked):
            missing.append(target)
        elif anchor and doc.suffix == ".md" and doc.exists():
            headings = re.findall(r"^#+ (.+)$", doc.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            if anchor not in slugs:
                missing.append(target)
    assert not missing, f"docs/{page}.md links to what is not there: {missing}"


def test_the_documentation_map_names_the_pages():
    assert {"results", "extending", "tasks/README", "forecast/README"} <= set(DOC_PAGES)


def test_the_readmes_hook_example_runs_on_the_main_jobs_run_and_means_something(
    tmp_path, monkeypatch, capsys
):
    """The example, as written, on a short run of the main job's preset: it prints the cached
    pattern's shape, and ablating the only head costs loss."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "mws_full", "--out", "runs/mws", *TRAIN_SHORT]) == 0
    code = re.search(r"```python\n(.*?)```", section("Hooking into the model"), re.S).group(1)
    capsys.readouterr()
    exec(code, {})
    shapes, intact, ablated = capsys.readouterr().out.strip().splitlines()
    assert "'blocks.0.attn.hook_pattern': (256, 1, 32, 32)" in shapes
    assert eval(ablated)["loss"] != eval(intact)["loss"]
