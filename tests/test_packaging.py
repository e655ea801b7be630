"""What the package imports is what pyproject.toml declares (a fresh install must be able to run
it)."""

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "abrupt"

# Optional imports: the extra that provides each, and the only module allowed to import it, lazily
# (inside a function), so that `import abrupt` and every command but that one work without it.
# (The tests' reference models import transformers too, from the test extra.)
OPTIONAL = {
    "transformers": ("hf", "export.py"),
    "ray": ("ray", "runner.py"),
    "devinterp": ("devinterp", "llc.py"),
    "datasets": ("devinterp", "llc.py"),
    "wandb": ("wandb", "tracking.py"),
    "tensorboard": ("tensorboard", "tracking.py"),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """{top-level module: [(file name, imported at module level)]} of third-party imports in
    src/abrupt."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("abrupt", "__future__"):
                    continue
                found.setdefault(top, []).append((path.name, id(node) in top_level))
    return found


@functools.cache
def _distribution(module: str) -> str:
    # an optional package may not be installed here: its module name is its distribution name
    return _norm(_installed().get(module, [module])[0])


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def test_every_import_is_declared_and_every_dependency_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        name: {_requirement_name(r) for r in reqs}
        for name, reqs in project["optional-dependencies"].items()
    }
    imports = _imports()
    for module, where in imports.items():
        dist = _distribution(module)
        if module in OPTIONAL:
            extra, allowed = OPTIONAL[module]
            assert dist in extras[extra], f"{module} is imported but not in the [{extra}] extra"
            assert all(f == allowed and not top for f, top in where), (
                f"{module} may only be imported lazily in {allowed}: {where}"
            )
        else:
            assert dist in required, (
                f"{module} (distribution {dist}) is imported in {where[0][0]} but not in "
                "[project] dependencies"
            )
    used = {_distribution(m) for m in imports if m not in OPTIONAL}
    assert required <= used, f"declared but never imported: {sorted(required - used)}"


def test_ci_first_runs_the_readmes_set_up_and_test_commands_as_written():
    """A fresh machine's CI starts with the README's set-up, then its test command, each exactly a
    line of .ci/run, before anything else is installed; what they leave out (extras, Chromium)
    comes after, with the tests that need it (marked `extra`)."""
    readme = (ROOT / "README.md").read_text()
    lines = {}
    quick_start = (("set up", "python3 -m pip install"), ("run the tests", "python3 -m pytest"))
    for what, start in quick_start:
        found = re.search(rf"^({re.escape(start)}[^#\n]*?)\s+# {what}\b", readme, re.M)
        assert found, f"the README's quick start has no line `{start} ...  # {what}`"
        lines[what] = found.group(1)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    installs = [i for i, line in enumerate(commands) if " pip install " in f" {line} "]
    for what, command in lines.items():
        assert command in commands, f"README's {what} command {command!r} is not a line of .ci/run"
    setup, tests = commands.index(lines["set up"]), commands.index(lines["run the tests"])
    assert installs[0] == setup < tests < installs[1], (
        ".ci/run must run the README's set-up, then its test command, before installing more"
    )
    again = f"{lines['run the tests']} -m 'extra and not slow'"  # the default suite's, marked
    assert again in commands[installs[1] :], f"after the extras, .ci/run runs `{again}`"
    if " -n " in f"{lines['run the tests']} ":
        test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]["test"]
        assert "pytest-xdist" in {_requirement_name(r) for r in test_extra}
