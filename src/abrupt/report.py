"""One self-contained HTML page per run (`RUN/report.html`): the loss curve with the transition,
then
each analysis with its figures, its numbers and the paper's finding beside ours.

Reads only what training and the analyses wrote (summary.json, loss.png, analysis/*/), never a
model, so it can be rerun at no cost. The page is a Jinja2 template with autoescaping: every value
from the run directory is text, never markup. Figures are embedded as data URIs, and only PNG
files inside the run directory are embedded, whatever a results.json names.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from . import tasks
from .analysis.common import Table, Text, number
from .analysis.registry import discover, load_results
from .dynamics.transition import HEADLINE_LABEL
from .run.rundir import RunDirError, atomic_write_text, read_config, read_json, read_summary

# The page's template and style: package files beside this module (HTML and CSS, not Python), in
# UTF-8 whatever the locale's encoding.
_TEMPLATES = resources.files("abrupt") / "templates"
STYLE = (_TEMPLATES / "report.css").read_text(encoding="utf-8").strip()
TEMPLATE = (_TEMPLATES / "report.html.j2").read_text(encoding="utf-8")

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


# a table of more rows shows its first ten and folds the rest into a <details> element
LONG_TABLE, SHOWN_ROWS = 16, 10


def _figure_html(path: Path | None) -> Any:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return _ENV.from_string(
        '<figure><img src="data:image/png;base64,{{ d }}" alt="{{ n }}"><figcaption>{{ n '
        "}}</figcaption></figure>"
    ).render(d=data, n=path.name)


def _inside(run_dir: Path, folder: Path, name: Any) -> Path | None:
    """`folder/name` if it is a PNG file inside the run directory, else None (never follow a
    results.json out of the run)."""
    if not isinstance(name, str):
        return None
    path = (folder / name).resolve()
    if path.suffix != ".png" or not path.is_file() or not path.is_relative_to(run_dir.resolve()):
        return None
    return path


def _transition(summary: dict[str, Any], headline: str) -> str:
    """summary.json in the words of the README's glossary ("Transition terms"), the same as
    loss.png's; `headline`: what the loss the transition is read from is."""

    def get(key: str) -> str:
        return number(summary.get(key))

    parts = [
        f"the transition is read from {headline}: plateau_start {get('plateau_start')}, "
        f"plateau_level {get('plateau_level')}"
    ]
    if summary.get("plateau_end") is not None:
        parts.append(
            f"plateau_end {get('plateau_end')} (25% below the plateau), plateau_steps "
            f"{get('plateau_steps')} (P)"
        )
    parts.append(
        f"escape_step {get('escape_step')}"
        if summary.get("escape_step") is not None
        else "no escape_step (never 20% below the plateau)"
    )
    parts.append(
        f"drop_step {get('drop_step')} (below half the plateau)"
        if summary.get("drop_step") is not None
        else "no drop_step (never below half the plateau)"
    )
    parts.append(
        f"dropped {'yes' if summary.get('dropped') else 'no'} (final level "
        f"{get('final_level')} after {get('steps')} steps; "
        "dropped needs 10x below the plateau)"
    )
    f = (
        get("drop_factor")
        if summary.get("drop_factor") is not None
        else "unbounded (the loss reached 0)"
    )
    factor = (
        f" (drop_factor {f} within P/4 steps after plateau_end; sudden needs 5)"
        if summary.get("plateau_end") is not None
        else ""
    )
    parts.append(f"sudden {'yes' if summary.get('sudden') else 'no'}{factor}")
    if summary.get("fall_ratio") is not None:
        parts.append(
            f"fall_ratio {get('fall_ratio')} (fall_start {get('fall_start')} to fall_end "
            f"{get('fall_end')})"
        )
    return "; ".join(parts) + "."


def _findings(run_dir: Path) -> list[list[str]]:
    """The story of the run in one table: each analysis's `findings(numbers)` rows ([question,
    this run, what the paper or the follow-up finds, agrees / differs]), in report order. An
    analysis whose results cannot be read for it adds none (its section says why)."""
    rows = []
    for name, r in load_results(run_dir).items():
        told = getattr(discover()[name], "findings", None)
        if told is None:
            continue
        try:
            rows += told(r)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return rows


def _sections(run_dir: Path) -> list[dict[str, Any]]:
    analyses = discover()
    out = []
    for name, r in load_results(run_dir).items():
        mod, folder = analyses[name], run_dir / "analysis" / name
        try:
            notes = r.get("notes") if isinstance(r.get("notes"), list) else []
            blocks = (
                [Text(f"Adjusted to this run: {'; '.join(map(str, notes))}.")] if notes else []
            ) + mod.render(r)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            blocks = [
                Text(
                    f"results.json of {name} could not be read ({type(e).__name__}: {e}); rerun "
                    f"`abrupt analyze --only {name}`."
                )
            ]
        names = (
            r.get("figures")
            if isinstance(r.get("figures"), list)
            else sorted(p.name for p in folder.glob("*.png"))
        )
        figures = [p for p in (_inside(run_dir, folder, f) for f in names) if p is not None]
        out.append(
            {
                "name": name,
                "title": mod.TITLE,
                "paper": mod.PAPER,
                "selection": r.get("selection"),
                "blocks": [b for b in blocks if isinstance(b, (Table, Text))],
                "figures": figures,
            }
        )
    return out


def _skipped(run_dir: Path) -> dict[str, str]:
    path = run_dir / "analysis" / "skipped.json"
    found = read_json(path) if path.exists() else {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def build(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        raise RunDirError(
            f"{run_dir} has no summary.json; train it (or run `abrupt plot {run_dir}`) first"
        )
    summary = read_summary(run_dir)
    # resolved: an older run's renamed keys as today's
    config = read_config(run_dir)
    task = tasks.get(config.task.name)
    loss_png = _inside(run_dir, run_dir, "loss.png")
    try:
        page = _ENV.from_string(TEMPLATE).render(
            name=run_dir.resolve().name,
            style=STYLE,
            c=config.to_dict(),
            task_line=task.describe(config),
            transition=_transition(summary, HEADLINE_LABEL[task.run_kind(config)]),
            loss_png=loss_png,
            forecast_png=_inside(run_dir, run_dir, "forecast.png"),
            sections=_sections(run_dir),
            findings=_findings(run_dir),
            skipped=_skipped(run_dir),
            cell=number,
            long=LONG_TABLE,
            shown=SHOWN_ROWS,
            fig=lambda p: Markup(_figure_html(p)),
        )
    except jinja2.UndefinedError as e:
        raise RunDirError(
            f"{run_dir / 'config.json'} lacks a field the report needs ({e})"
        ) from None
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path
