"""The intervention table of docs/plateau/README.md, from the committed results: the finished
trials of the sweeps under docs/plateau/ (their results.jsonl) and the single runs under
docs/plateau/runs/ (a config.json and summary.json each; some are sweep trials stopped once their
P/4 window had closed).
Runs of one setting are pooled whatever their source: P, F and the end fold as `median [min–max]`
over seeds (sweep_summary.spread), `sudden` counted. A run stopped before its planned last step
shows that step in the end-fold column, so its end fold is not comparable with the others'.

    python docs/plateau/interventions_table.py
"""

from pathlib import Path

from abrupt.config import preset
from abrupt.run.rundir import read_config, read_summary
from abrupt.sweep.runner import config_of, read_results, spec_from_file
from abrupt.sweep.summary import end_fold, spread

HERE = Path(__file__).resolve().parent
QUIET_KEYS = (
    "seed",
    "train.progress",
    "train.steps",
    "train.stop_after_drop",
)  # the steps are in the end-fold column


def setting(cfg: dict) -> tuple[str, str]:
    """(problem, `key=value` changes from the preset) of a resolved configuration."""
    base = preset(cfg["preset"]).to_dict()
    changes = [
        f"{section}.{k}={v}"
        for section, values in cfg.items()
        if isinstance(base.get(section), dict)
        for k, v in values.items()
        if base[section].get(k) != v and f"{section}.{k}" not in QUIET_KEYS
    ]
    problem = f"{cfg['data']['m']}×{cfg['data']['n']} rank {cfg['data']['rank']}"
    return problem, f"preset {cfg['preset']}: " + (", ".join(changes) or "as is")


def records() -> dict[tuple[str, str], list[tuple[str, int, dict]]]:
    """(problem, setting) -> [(source, seed, summary)] over the sweeps and the single runs."""
    out: dict[tuple[str, str], list[tuple[str, int, dict]]] = {}
    for spec in sorted(
        HERE.glob("*.yaml")
    ):  # a sweep's results lie in the folder named as its spec
        path = HERE / spec.stem / "results.jsonl"
        for row in read_results(path) if path.exists() else []:
            if row["status"] == "done":
                cfg = config_of(spec_from_file(spec).preset, row["overrides"]).to_dict()
                out.setdefault(setting(cfg), []).append(
                    (f"`{spec.stem}`", cfg["seed"], row["summary"])
                )
    for run in sorted((HERE / "runs").iterdir()):
        cfg = read_config(run).to_dict()  # resolved: renamed keys as today's
        summary = read_summary(run)
        out.setdefault(setting(cfg), []).append((f"`runs/{run.name}`", cfg["seed"], summary))
    return out


def col(values: list[float | None]) -> str:
    """`median [min–max]` of one column over a setting's seeds; each value listed, a dash for a run
    that never left its plateau (no P, no F), when some are missing."""
    if all(v is not None for v in values):
        return spread(values)
    return ", ".join("—" if v is None else f"{v:.4g}" for v in values)


def main() -> None:
    print(
        "| problem | setting | from | seeds | sudden | P | F within P/4 | end fold (at step) | "
        "final L_mask | minutes per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (problem, name), rows in records().items():
        rows.sort(key=lambda r: r[1])
        sums = [s for _, _, s in rows]
        sources = ", ".join(dict.fromkeys(src for src, _, _ in rows))
        steps = sorted({s["steps"] for s in sums})
        cells = [
            col([s["plateau_steps"] for s in sums]),
            col([s["drop_factor"] for s in sums]),
            f"{col([end_fold(s) for s in sums])} "
            f"({'–'.join(str(n) for n in dict.fromkeys((steps[0], steps[-1])))})",
            col([s["final_level"] for s in sums]),
            col([s["seconds"] / 60 for s in sums]),
        ]
        print(
            f"| {problem} | {name} | {sources} | {', '.join(str(seed) for _, seed, _ in rows)} | "
            f"{sum(bool(s['sudden']) for s in sums)} of {len(sums)} | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main()
