"""Batched torch nuclear-norm solver against CVXPY on the same problems: matrices per second and
MSE gap, printed as ratios (target: >= 100x faster, MSE within 5%).

    python benchmarks/solver_speed.py [--n 512] [--p-mask 0.3] [--lambda 1e-3]
"""

import argparse
import warnings

import torch

from abrupt import baselines as B
from abrupt.config import DataConfig
from abrupt.data import seeded_batch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--p-mask", type=float, default=0.3)
    p.add_argument(
        "--lambda", dest="lam", type=float, default=None, help="regularized form (default: exact)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (CVXPY's solver runs on one)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batch = seeded_batch(DataConfig(p_mask=args.p_mask), args.n, args.seed)
    a, hidden = batch.target.reshape(-1, 7, 7).double(), batch.mask.reshape(-1, 7, 7)
    warnings.simplefilter("ignore")
    fast = B.complete(a, ~hidden, args.lam)
    ref = B.complete(a, ~hidden, args.lam, solver="cvxpy")
    s_fast, s_ref = B.score(fast.x, batch), B.score(ref.x, batch)
    form = "exact" if args.lam is None else f"regularized, lambda={args.lam:g}"
    print(f"{args.n} problems, 7x7 rank 2, p_mask {args.p_mask}, {form}")
    print(
        f"torch ADMM : {args.n / fast.seconds:9.1f} matrices/s  ({fast.seconds:.2f} s, "
        f"{fast.iterations} iterations, "
        f"{fast.failures} not converged)  L_mask {s_fast['loss_mask']:.5f}"
    )
    print(
        f"CVXPY {B.CVXPY_SOLVER}: {args.n / ref.seconds:9.1f} matrices/s  ({ref.seconds:.2f} s, "
        f"{ref.inaccurate} inaccurate)  "
        f"L_mask {s_ref['loss_mask']:.5f}"
    )
    print(
        f"speed ratio torch/CVXPY: {ref.seconds / fast.seconds:.1f}x;  MSE ratio (hidden): "
        f"{s_fast['loss_mask'] / s_ref['loss_mask']:.4f}; "
        f"MSE ratio (all): {s_fast['loss'] / s_ref['loss']:.4f}"
    )


if __name__ == "__main__":
    main()
