"""The lever table of docs/plateau/README.md, from the committed results: every setting of the
sweeps under docs/plateau/ (their results.jsonl; the seeds of a setting pooled) and every single run
under docs/plateau/runs/ (its config.json and summary.json). P, F and the end fold as
`median [min–max]` over seeds (sweep_summary.spread), `sudden` counted.

    python docs/plateau/levers_table.py
"""

import json
from pathlib import Path

from abrupt.config import preset
from abrupt.sweep import read_results
from abrupt.sweep_summary import end_fold, spread

HERE = Path(__file__).resolve().parent
SWEEPS = (("small_levers",), ("small_batch",), ("small_bias", "small_bias_seed2"))  # sweeps of one setting pooled
QUIET_KEYS = ("seed", "train.progress", "train.steps", "train.stop_after_drop")  # the steps are in the end-fold column


def overrides(cfg: dict) -> str:
    """The run's configuration as `key=value` changes from its preset."""
    base = preset(cfg["preset"]).to_dict()
    out = [f"{section}.{k}={v}" for section, values in cfg.items() if isinstance(base.get(section), dict)
           for k, v in values.items() if base[section].get(k) != v and f"{section}.{k}" not in QUIET_KEYS]
    return ", ".join(out)


def num(x: float | None) -> str:
    """Three significant digits; a dash where the run never left its plateau (no P, no F)."""
    return "—" if x is None else f"{x:.3g}"


def main() -> None:
    print("| problem | setting | seeds | sudden | P | F within P/4 | end fold (steps) | final L_mask | minutes per run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for names in SWEEPS:
        groups: dict[str, list[dict]] = {}
        for name in names:
            path = HERE / name / "results.jsonl"
            for row in read_results(path) if path.exists() else []:
                if row["status"] == "done":
                    setting = ", ".join(f"{k}={v}" for k, v in row["overrides"].items() if k not in QUIET_KEYS)
                    groups.setdefault(setting, []).append(row)
        for setting, rows in groups.items():
            sums = [r["summary"] for r in rows]
            print(f"| 4×4 rank 1 (`{'`, `'.join(names)}`) | {setting} | {', '.join(r['overrides']['seed'] for r in rows)} | "
                  f"{sum(bool(s['sudden']) for s in sums)} of {len(sums)} | {spread([s['plateau_steps'] for s in sums])} | "
                  f"{spread([s['drop_factor'] for s in sums])} | {spread([end_fold(s) for s in sums])} ({sums[0]['steps']}) | "
                  f"{spread([s['final_loss_mask'] for s in sums])} | {spread([r['summary']['seconds'] / 60 for r in rows])} |")
    for run in sorted((HERE / "runs").iterdir()):
        s = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        problem = f"{cfg['data']['m']}×{cfg['data']['n']} rank {cfg['data']['rank']}"
        print(f"| {problem} (`runs/{run.name}`) | preset {cfg['preset']}: {overrides(cfg)} | {cfg['seed']} | "
              f"{int(bool(s['sudden']))} of 1 | {s['plateau_steps'] or '—'} | {num(s['drop_factor'])} | {num(end_fold(s))} ({s['steps']}) | "
              f"{num(s['final_loss_mask'])} | {num(s['seconds'] / 60)} |")


if __name__ == "__main__":
    main()
