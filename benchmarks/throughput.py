"""Training steps per second: our MatrixBert against HuggingFace BertModel + linear read-out.

Same configuration, same weights, same batches, same process; the two alternate in rounds so that
machine noise hits both. Prints steps/s for each and the ratio ours / HF.

    python benchmarks/throughput.py                 # cpu preset and paper preset
    python benchmarks/throughput.py --presets cpu --rounds 5 --steps 20
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # hf_oracle

from abrupt.config import preset
from abrupt.data import generator, sample_batch
from abrupt.losses import losses
from abrupt.models.registry import build_model
from abrupt.train.trainer import resolve_device
from hf_oracle import HFMatrixBert  # tests/hf_oracle.py: the HuggingFace reference


def steps_per_second(model, batches, device) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for b in batches:
        loss = losses(model(b.tokens), b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) / (time.perf_counter() - t0)


def bench(name: str, rounds: int, steps: int, device: torch.device, compile_: bool) -> None:
    cfg = preset(name)
    ours = build_model(cfg.model, 49, seed=0).to(device)
    ref = HFMatrixBert(ours).to(device)
    models = {"ours": ours, "hf": ref}
    if compile_:
        models["ours+compile"] = torch.compile(build_model(cfg.model, 49, seed=0).to(device))
    g = generator(0)
    batches = [sample_batch(cfg.data, cfg.train.batch_size, g).to(device) for _ in range(steps)]
    for m in models.values():  # warm-up (and compilation)
        steps_per_second(m, batches[:2], device)
    rates = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            rates[k].append(steps_per_second(m, batches, device))
    best = {k: max(v) for k, v in rates.items()}
    line = ", ".join(f"{k} {v:.2f} steps/s" for k, v in best.items())
    ratios = ", ".join(f"{k}/hf = {v / best['hf']:.2f}x" for k, v in best.items() if k != "hf")
    print(
        f"{name:6s} ({device.type}, batch {cfg.train.batch_size}, width {cfg.model.width}): "
        f"{line}; {ratios}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="cpu,paper")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="steps per round (default: 30 for cpu, 2 for paper on CPU)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of our model")
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.presets.split(","):
        steps = args.steps or (2 if name == "paper" and device.type == "cpu" else 30)
        bench(name, args.rounds, steps, device, args.compile)


if __name__ == "__main__":
    main()
