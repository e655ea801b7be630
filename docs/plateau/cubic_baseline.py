"""A reference level for the 7x7 rank-2 problem (docs/plateau/README.md): the L_mask of the best
predictor of a hidden entry x_ij that is linear in the third-order statistic
S_ij = sum over observed x_il, x_kj, x_kl (k != i, l != j) of x_il * x_kj * x_kl,
fitted by least squares separately for each number of terms in the sum. With zero-mean factors
every pairwise covariance between entries is 0, so S is the lowest-order statistic that carries
signal (the high-order saddle of the plateau).

    python docs/plateau/cubic_baseline.py        # prints the copying level and the cubic level
"""

import numpy as np


def main(n: int = 20_000, m: int = 7, rank: int = 2, p_mask: float = 0.3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(-1, 1, (n, m, rank)), rng.uniform(-1, 1, (n, m, rank))
    x = np.round(u @ v.transpose(0, 2, 1), 2)  # the paper's values, on the 0.01 grid
    hidden = rng.random((n, m, m)) < p_mask
    seen = (~hidden).astype(float)
    xo = x * seen
    ys, stats, terms = [], [], []
    for i in range(m):
        for j in range(m):
            sel = hidden[:, i, j]
            s = np.einsum(
                "nl,nk,nkl->n", xo[:, i, :], xo[:, :, j], xo
            )  # x_ij itself is hidden: its terms are 0
            c = np.einsum("nl,nk,nkl->n", seen[:, i, :], seen[:, :, j], seen)
            ys.append(x[sel, i, j])
            stats.append(s[sel])
            terms.append(c[sel])
    y, s, c = np.concatenate(ys), np.concatenate(stats), np.concatenate(terms)
    sse = 0.0
    for count in np.unique(c):
        k = c == count
        a = np.stack([s[k], np.ones(k.sum())], 1)
        w = np.linalg.lstsq(a, y[k], rcond=None)[0]
        sse += float(np.sum((a @ w - y[k]) ** 2))
    print(
        f"{len(y)} hidden entries; copying level (predict 0): L_mask {np.mean(y**2):.4f}; "
        f"best linear in S per term count: L_mask {sse / len(y):.4f}"
    )


if __name__ == "__main__":
    main()
