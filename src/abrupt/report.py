"""One self-contained HTML page per run (`RUN/report.html`): the loss curve with the transition, then
each analysis with its figures, its numbers and the paper's finding beside ours.

Reads only what training and the analyses wrote (summary.json, loss.png, analysis/*/), never a
model, so it can be rerun at no cost. Figures are embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Callable

from .analysis.registry import load_results
from .checkpoints import atomic_write_bytes

PAPER = {
    "copying": "Before the drop the model copies its input: with a value token put at hidden positions "
    "its predictions there equal that value (MSE to the substitute near 0), on low-rank and random inputs "
    "alike, while L_obs stays near 0 (Table 1).",
    "attention": "After the drop some heads attend to the query's row (e.g. layer 2 head 1) or column "
    "(layer 2 head 2) and to observed entries; before it the patterns are trivial (Fig. 4, 5).",
    "probe": "The deeper layers (3 and 4) store the input matrix: the row of the masked input is linearly "
    "decodable from their hidden states after the drop, not before (Fig. 6).",
    "embeddings": "Token-embedding norm depends on |value| (symmetric about 0); the first two principal "
    "components separate sign and magnitude; position embeddings cluster by column after the drop, and "
    "permuting them destroys the model's accuracy (Fig. 7, 9, 10).",
    "patching": "Writing clean attention-head outputs into the run on -X moves the output toward X: the "
    "attention heads carry the information that completes the matrix.",
    "ablation": "Replacing attention patterns by input-independent (batch-mean) or uniform ones raises the "
    "loss after the drop: the model needs input-dependent attention.",
    "switching": "Attention is the component that changes at the drop: moving the attention weights between "
    "a plateau and a final model carries most of the difference in loss.",
    "compare": "BERT reaches lower MSE than nuclear-norm minimization at its training p_mask and a different "
    "nuclear norm: it is not doing nuclear-norm minimization (Fig. 3).",
    "ood": "Out of distribution the model behaves close to nuclear-norm minimization, except when the number of "
    "columns changes, since position embeddings encode the column (Fig. 18, 19).",
}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _copying(r: dict[str, Any]) -> str:
    rows = [[x["step"], x["input"], x["substitute"], x["loss_obs"], x["mse_to_substitute"], x["loss_mask"]] for x in r["rows"]]
    return _table(["step", "input", "at hidden", "L_obs", "MSE to substitute", "L_mask (vs truth)"], rows)


def _attention(r: dict[str, Any]) -> str:
    out = [f"<p>Chance masses: row {r['chance']['row']:.3f}, column {r['chance']['column']:.3f}, observed {r['chance']['observed']:.2f}. "
           f"A head with mass ≥ {r['head_threshold']} on the query's row (column) is listed as a row (column) head.</p>"]
    rows = []
    for step, e in r["steps"].items():
        masses = e["random"]
        for l, (row_l, col_l, obs_l) in enumerate(zip(masses["row"], masses["column"], masses["observed"])):
            for h in range(len(row_l)):
                rows.append([step, f"{l}:{h}", row_l[h], col_l[h], obs_l[h], masses["row_hidden"][l][h], masses["column_hidden"][l][h]])
        out.append(f"<p>Step {step}: row heads {', '.join(e['row_heads']) or 'none'}; column heads {', '.join(e['column_heads']) or 'none'}.</p>")
    out.append(_table(["step", "layer:head", "row mass", "column mass", "observed mass", "row (hidden q)", "column (hidden q)"], rows))
    return "".join(out)


def _probe(r: dict[str, Any]) -> str:
    rows = [[x["step"], x["layer"], x["row_mse"], x["row_abs_cos"], x["value_masked_r2"], x["value_observed_r2"], x["singular_abs_cos"]] for x in r["rows"]]
    return _table(["step", "layer", "row MSE", "row |cos|", "value R² (masked)", "value R² (observed)", "top singular vector |cos|"], rows)


def _embeddings(r: dict[str, Any]) -> str:
    rows = [[s, e["position_knn_purity_column"], e["position_knn_purity_row"], e["token_norm_symmetry_corr"],
             e["token_pc_corr_with_value"][0], e["token_pc_corr_with_abs_value"][1]] for s, e in r["steps"].items()]
    p = r["permutation"]
    perm = _table(["", "L", "L_obs", "L_mask"], [["original", *p["original"].values()], ["permuted (mean)", *p["permuted_mean"].values()]])
    return (f"<p>k-NN purity of position embeddings (k = {r['k']}); chance: column {r['chance']['column']:.3f}, row {r['chance']['row']:.3f}.</p>"
            + _table(["step", "purity by column", "purity by row", "norm symmetry corr(−v, v)", "|corr(PC1, value)|", "|corr(PC2, |value|)|"], rows)
            + f"<p>Permuting the position embeddings of step {p['step']} ({len(p['permuted'])} seeded permutations):</p>" + perm)


def _patching(r: dict[str, Any]) -> str:
    rows = []
    for step, e in r["steps"].items():
        c = e["chosen"]
        best = max(((v, f"{l}:{h}") for l, row in enumerate(e["per_head_recovery_hidden"]) for h, v in enumerate(row)))
        rows.append([step, r["heads"], r["positions"], c["recovery_hidden"], c["recovery_observed"], c["mse_to_X_hidden"], c["mse_to_minus_X_hidden"], f"{best[1]} ({best[0]:.3f})"])
    return _table(["step", "heads patched", "positions", "recovery (hidden)", "recovery (observed)", "MSE to X (hidden)", "MSE to −X (hidden)", "best single head (hidden)"], rows)


def _ablation(r: dict[str, Any]) -> str:
    rows = []
    for step, e in r["steps"].items():
        rows.append([step, "none", *e["none"].values()])
        for mode, v in e["chosen"].items():
            rows.append([step, f"{mode} ({r['heads']})", *v.values()])
    return _table(["step", "ablation", "L", "L_obs", "L_mask"], rows)


def _switching(r: dict[str, Any]) -> str:
    rows = [[f"plateau (step {r['pre_step']}) as is", *r["pre"].values()], [f"final (step {r['post_step']}) as is", *r["post"].values()]]
    rows += [[f"plateau + final {g}", *v.values()] for g, v in r["pre_with_post"].items()]
    rows += [[f"final + plateau {g}", *v.values()] for g, v in r["post_with_pre"].items()]
    return _table(["model", "L", "L_obs", "L_mask"], rows)


def _compare(r: dict[str, Any]) -> str:
    rows = [[x["p_mask"], x["method"], x["loss"], x["loss_mask"], x["nuclear_norm"]] for x in r["rows"] if x["method"] in ("bert", "nuclear_norm")]
    return (f"<p>BERT below nuclear-norm minimization (L_mask) at p_mask {r['flips']['bert_better_at']}; ordering flips at {r['flips']['flips_at']}. "
            f"Ground-truth mean nuclear norm {r['true_nuclear_norm']:.3f}.</p>" + _table(["p_mask", "method", "MSE", "MSE hidden", "nuclear norm"], rows))


def _ood(r: dict[str, Any]) -> str:
    rows = [[x["family"], x["variant"], x["method"], x["loss_mask"], x["nuclear_norm"]] for x in r["rows"]]
    return _table(["family", "setting", "method", "MSE hidden", "nuclear norm"], rows)


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "copying": ("Copying before the drop (Table 1)", _copying),
    "attention": ("Attention maps (Fig. 4, 5)", _attention),
    "probe": ("Linear probes (Fig. 6)", _probe),
    "embeddings": ("Embeddings (Fig. 7, 9, 10)", _embeddings),
    "patching": ("Activation patching", _patching),
    "ablation": ("Attention ablation", _ablation),
    "switching": ("Switching components", _switching),
    "compare": ("BERT vs nuclear-norm minimization (Fig. 3)", _compare),
    "ood": ("Out of distribution (Fig. 18, 19)", _ood),
}

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}figure{margin:.5em 0}figcaption{font-size:11px;color:#666}
.paper{background:#f6f8fa;border-left:4px solid #888;padding:.4em .8em}.ours{border-left:4px solid #c33;padding:.4em .8em}
section{border-top:1px solid #ddd;margin-top:1.5em}"""

# Marks the page once every image has decoded (or failed): a headless browser can read the outcome.
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = ok + '/' + imgs.length;
});
</script>"""


def build(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{run_dir} has no summary.json; train it (or run `abrupt plot {run_dir}`) first")
    summary = json.loads(summary_path.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    results = load_results(run_dir)
    m, d = config["model"], config["data"]
    parts = [f"<h1>abrupt report: {html.escape(run_dir.name)}</h1>",
             f"<p>Preset <b>{html.escape(config['preset'])}</b>, seed {config['seed']}: {m['layers']} layers, {m['heads']} heads, width {m['hidden']}; "
             f"{d['m']}×{d['n']} rank-{d['rank']} matrices, p_mask {d['p_mask']}; lr {config['train']['lr']}, batch {config['train']['batch_size']}.</p>",
             "<section><h2>Loss and the transition</h2>"]
    drop = summary.get("drop_step")
    parts.append(f"<p>Plateau L_mask {summary.get('plateau_loss_mask') or float('nan'):.4f} from step {summary.get('plateau_start')}; "
                 + (f"drop at step {drop}; " if drop is not None else "<b>no drop detected</b>; ")
                 + f"final L {summary.get('final_loss') or float('nan'):.4g}, final L_mask {summary.get('final_loss_mask') or float('nan'):.4g} after {summary.get('steps')} steps.</p>")
    if (run_dir / "loss.png").exists():
        parts.append(_img(run_dir / "loss.png"))
    parts.append("</section>")
    if not results:
        parts.append("<p>No analyses yet: run <code>abrupt analyze RUN</code>.</p>")
    for name, (title, render) in SECTIONS.items():
        if name not in results:
            continue
        r = results[name]
        folder = run_dir / "analysis" / name
        parts.append(f"<section id='{name}'><h2>{html.escape(title)}</h2>")
        if "selection" in r:
            parts.append(f"<p><i>{html.escape(r['selection'])}</i></p>")
        parts.append(f"<div class='paper'><b>Paper:</b> {html.escape(PAPER[name])}</div>")
        parts.append(f"<div class='ours'><b>This run:</b>{render(r)}</div>")
        for fig in r.get("figures") or sorted(p.name for p in folder.glob("*.png")):
            if (folder / fig).exists():
                parts.append(_img(folder / fig))
        parts.append("</section>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>abrupt report: {html.escape(run_dir.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}{CHECK}</body></html>")
    path = run_dir / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
