"""The package's shape: the import graph flows one way (no cycle, imports inside functions
included), up docs/extending.md's layout table, and the configuration imports nothing of abrupt."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "abrupt"


def _module(path: Path) -> str:
    parts = ("abrupt", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (never executed: no edge of the graph)."""
    lines = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        ):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """{module: the abrupt modules it imports}, every import statement of every module."""
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                target, names = "", [a.name for a in node.names]
            else:
                continue
            for name in [target, *names]:
                if name in files and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_configuration_imports_nothing_of_abrupt():
    graph = import_graph()
    for mod, imported in graph.items():
        if mod == "abrupt.config" or mod.startswith("abrupt.config."):
            assert all(i.startswith("abrupt.config") for i in imported), (mod, imported)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def layout_rows() -> list[str]:
    """The rows of docs/extending.md's layout table, top to bottom: `config/`, `data.py`, ..."""
    doc = (SRC.parents[1] / "docs" / "extending.md").read_text()
    table = doc.split("## Layout")[1].split("\n## ")[0]
    return re.findall(r"^\| `([\w/.]+)` \|", table, re.M)


def _row(mod: str, rows: list[str]) -> str:
    """The layout row of module `mod` (a package's modules share the package's row)."""
    top = mod.split(".")[1]
    row = f"{top}/" if f"{top}/" in rows else f"{top}.py"
    assert row in rows, f"{mod} has no row in docs/extending.md's layout table"
    return row


def test_imports_go_up_the_layout_table():
    """docs/extending.md: a module imports only modules above it in the table (or in its own
    row)."""
    rows = layout_rows()
    graph = import_graph()
    mods = [m for m in graph if m != "abrupt"]
    upward = [
        (mod, imported)
        for mod in mods
        for imported in graph[mod]
        if imported != "abrupt" and rows.index(_row(imported, rows)) > rows.index(_row(mod, rows))
    ]
    assert upward == [], upward
