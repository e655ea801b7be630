# %% [markdown]
# # abrupt in one notebook: a plateau, a sudden drop, and the attention that learned
#
# This trains the follow-up's moving-window sum (preset `mws`: a one-layer decoder of width 64 reads
# 16 integers and writes y_i = x_(i-1) + x_i mod 17) until shortly after its loss drops, plots the
# curve, reads an attention pattern through a hook point and runs one analysis: about a minute on
# one CPU core. `examples/quickstart.ipynb` and `examples/quickstart.py` hold the same cells
# (`tests/test_examples.py` checks it and runs the notebook).

# %%
from pathlib import Path

import matplotlib.pyplot as plt  # before abrupt, so that a notebook keeps its inline figures
import torch

from abrupt.analysis.registry import analyze
from abrupt.config import apply_overrides, preset
from abrupt.hooks import act_name
from abrupt.run.checkpoints import list_checkpoints, load_run
from abrupt.run.rundir import read_json, read_metrics, unique_dir
from abrupt.tasks import get as get_task
from abrupt.train.trainer import train

torch.set_num_threads(1)  # small models run best on one thread (README: Quick start)

# %% [markdown]
# ## Train until shortly after the drop
#
# `train.stop_after_drop=20` ends the run 20 steps after the loss first falls 10x below its
# plateau; `train.progress=true` logs the follow-up's progress measures (attention on the correct
# keys, repetition, collapse) for the analysis at the end. `abrupt train --preset mws
# train.stop_after_drop=20 train.progress=true` is the same from the command line.

# %%
cfg = apply_overrides(preset("mws"), ["train.stop_after_drop=20", "train.progress=true"])
run = unique_dir(Path("runs"), "quickstart")
summary = train(cfg, run, verbose=False)
print(run, {k: summary[k] for k in ("plateau_steps", "escape_step", "drop_factor", "sudden")})

# %% [markdown]
# ## The loss curve
#
# `metrics.jsonl` holds a row per log (every 10 steps): the evaluation cross-entropy on the outputs
# sits near log 17 on the plateau, then falls within a few tens of steps (`summary.json`'s window
# rule calls that sudden). Every run also draws this as `loss.png`.

# %%
rows = read_metrics(run)
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.semilogy([r["step"] for r in rows], [r["eval_loss"] for r in rows], label="evaluation loss")
ax.axvline(summary["escape_step"], color="gray", ls="--", label="escape_step")
ax.set(xlabel="step", ylabel="cross-entropy (nats per output token)")
ax.legend()
fig.savefig(run / "quickstart_loss.png")  # a notebook also shows it below the cell

# %% [markdown]
# ## An attention pattern, read through a hook
#
# Every activation passes a named hook point (docs/hooks.md); `run_with_cache` returns those asked
# for. `blocks.0.attn.hook_pattern` is (B, heads, queries, keys); with the follow-up's linear
# attention it holds the scores themselves. Output y_i must read x_(i-1) and x_i: the task's
# correct keys. On the plateau the outputs' attention is spread out; after the drop it sits on
# those two diagonals.

# %%
task = get_task(cfg.task.name)
batch = task.batch(cfg, 64, torch.Generator().manual_seed(0))
name = act_name("pattern", 0)
q0 = batch.out_start - 1  # the first query that predicts an output
saved = [c.step for c in list_checkpoints(run / "checkpoints")]
plateau = max(s for s in saved if s < summary["escape_step"])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
for ax, step in zip(axes, (plateau, saved[-1])):
    _, model, _ = load_run(run, step)
    _, cache = model.run_with_cache(batch.tokens[:, :-1], names=[name])
    att = cache[name][:, 0, q0:].abs()  # (B, outputs, keys): head 0, output queries
    on_keys = (att * batch.keys[:, 0, q0:]).sum() / att.sum()
    ax.imshow(att[0], cmap="viridis", aspect="auto")
    ax.set(title=f"step {step}: {on_keys:.0%} on the correct keys", xlabel="key position")
axes[0].set_ylabel("output y_i")
fig.savefig(run / "quickstart_attention.png")  # a notebook also shows it below the cell

# %% [markdown]
# ## One analysis
#
# `abrupt analyze RUN --only progress` (here its Python form) reads the progress measures training
# logged and finds when each moved half-way: attention to the correct keys moves before the loss
# does. It writes `RUN/analysis/progress/` (results.json, progress.png); `abrupt report RUN` makes
# the HTML page.

# %%
analyze(run, only=["progress"], verbose=False)
result = read_json(run / "analysis" / "progress" / "results.json")
print(f"drop at step {result['drop_step']}")
for r in result["rows"]:
    if r["measure"].startswith("prog_"):
        print(f"{r['measure']:16s} half-way at step {r['halfway_step']}")
