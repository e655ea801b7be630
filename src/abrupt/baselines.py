"""Classical matrix completion: nuclear-norm minimization, exact and regularized.

Two implementations of the same two problems (A: observed matrix, Omega: observed entries):

    exact:        min ||X||_*  s.t.  X_Omega = A_Omega
    regularized:  min (1/|Omega|) ||P_Omega(X - A)||_F^2 + lam ||X||_*

- `cvxpy_*`: one problem at a time with CVXPY (an SDP), solver and tolerances named explicitly.
  The reference.
- `torch_admm`: thousands of small problems at once on batched SVDs (ADMM with residual balancing
  and a shrinking active set), for either form. It reports, per problem, whether it met its
  tolerance; tests hold it to CVXPY.

`SolutionCache` keeps the torch solver's completions on disk, keyed by the problem itself: the
baseline depends on the data only, never on a model, so a second `abrupt analyze` of the run (an
option changed, another checkpoint) reads it back instead of solving again.

Edge cases are ordinary inputs here: a fully hidden row or column gets the minimum-norm fill
(zeros in that row when nothing ties it to the rest), p_mask = 0 returns A, a fully hidden matrix
returns 0. Problems that do not converge are counted, never silently returned as good.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .data import Batch
from .losses import as_floats, losses
from .run.rundir import atomic_write_bytes

PAPER_LAMBDAS = (5e-4, 1e-3, 1.5e-3, 1.75e-3, 2e-3, 5e-3, 1e-2)
CVXPY_SOLVER = "CLARABEL"
CVXPY_TOL = 1e-9


# A problem's outcome. CVXPY's own statuses: OPTIMAL (solved to the tolerance asked), INACCURATE
# (its solver stopped short of that and settled for a looser one: counted apart, never as solved);
# any other CVXPY status raises SolverError. The torch solver's: OPTIMAL or NOT_CONVERGED (it ran
# out of iterations before meeting its tolerance).
OPTIMAL, INACCURATE, NOT_CONVERGED = "optimal", "optimal_inaccurate", "not_converged"


class SolverError(RuntimeError):
    """A solver failed on a problem (no solution, or one of unknown quality)."""


@dataclass
class Completion:
    x: torch.Tensor  # (B, m, n) completed matrices, float64
    status: list[str]  # (B,) each problem's outcome: OPTIMAL, INACCURATE or NOT_CONVERGED
    iterations: int = 0
    seconds: float = 0.0

    @property
    def converged(self) -> torch.Tensor:
        """(B,) bool: solved to the tolerance asked."""
        return torch.tensor([s == OPTIMAL for s in self.status], dtype=torch.bool)

    @property
    def failures(self) -> int:
        """Problems the torch solver did not converge on."""
        return self.status.count(NOT_CONVERGED)

    @property
    def inaccurate(self) -> int:
        """Problems CVXPY solved only to a looser tolerance than asked."""
        return self.status.count(INACCURATE)


def svt(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Singular-value soft thresholding of a batch: prox of tau * ||.||_*.

    Computed from the eigendecomposition of the small Gram matrix X^T X (several times faster than
    a batched SVD for these tiny matrices): SVT(X) = X V diag(max(s - tau, 0) / s) V^T. Squaring
    only costs accuracy in singular values far below the largest, and those at or below tau are
    set to 0 anyway.
    """
    gram = x.mT @ x
    lam, v = torch.linalg.eigh(gram)
    s = lam.clamp_min(0).sqrt()
    tau_t = torch.as_tensor(tau, dtype=x.dtype).reshape(-1, 1) if torch.is_tensor(tau) else tau
    scale = torch.where(
        s > 0, torch.clamp(s - tau_t, min=0) / s.clamp_min(1e-300), torch.zeros_like(s)
    )
    return x @ (v * scale.unsqueeze(-2)) @ v.mT


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.double()).sum(-1)


def _prepare(a: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != observed.shape or a.dim() != 3:
        raise ValueError(
            "expected matrices and observed-mask of the same shape (B, m, n), got "
            f"{tuple(a.shape)} and {tuple(observed.shape)}"
        )
    obs = observed.bool()
    return torch.where(obs, a.double(), torch.zeros((), dtype=torch.float64)), obs


def torch_admm(
    a: torch.Tensor,
    observed: torch.Tensor,
    lam: float | None = None,
    tol: float = 1e-4,
    max_iter: int = 5000,
    rho: float = 1.0,
    init: torch.Tensor | None = None,
    relax: float = 1.6,
) -> Completion:
    """Batched ADMM on the split X = Z (X carries the data term, Z the nuclear norm).

    lam=None: the exact problem (X is the projection onto X_Omega = A_Omega); otherwise the
    regularized one (X minimizes the data term plus the augmented term, entrywise). Problems that
    meet the tolerance leave the active batch, so the slow few do not cost the rest.
    """
    t0 = time.perf_counter()
    b, obs = _prepare(a, observed)
    n = b.shape[0]
    z_out = b.clone()
    done = torch.zeros(n, dtype=torch.bool)
    count = obs.flatten(1).sum(1).to(torch.float64)
    weight = 2.0 / torch.clamp(count, min=1.0)  # d/dX of (1/|Omega|) ||.||^2 on Omega
    active = torch.arange(n)
    z, u = (b.clone() if init is None else init.double().clone()), torch.zeros_like(b)
    rho_t = torch.full((n,), rho, dtype=torch.float64)
    scale = torch.clamp(b.flatten(1).norm(dim=1), min=1.0)
    it = 0
    for it in range(1, max_iter + 1):
        bb, oo, r3 = b[active], obs[active], rho_t[active].reshape(-1, 1, 1)
        v = z - u
        if lam is None:
            x = torch.where(oo, bb, v)
        else:
            w = weight[active].reshape(-1, 1, 1)
            x = torch.where(oo, (w * bb + r3 * v) / (w + r3), v)
        thresh = (1.0 if lam is None else lam) / rho_t[active]
        x_hat = relax * x + (1 - relax) * z  # over-relaxation (Boyd et al. 2011, sec. 3.4.3)
        z_new = svt(x_hat + u, thresh)
        u = u + x_hat - z_new
        r = (x - z_new).flatten(1).norm(dim=1)
        dz = (z_new - z).flatten(1).norm(dim=1)
        s = rho_t[active] * dz
        z = z_new
        # Stop on the unscaled change of z too: with a small rho the dual residual s is small
        # long before z has settled.
        ok = (r <= tol * scale[active]) & (dz <= tol * scale[active])
        z_out[active] = x if lam is None else z
        if bool(ok.any()):
            done[active[ok]] = True
            keep = ~ok
            active, z, u, r, s = active[keep], z[keep], u[keep], r[keep], s[keep]
            if active.numel() == 0:
                break
        # Residual balancing (Boyd et al. 2011, sec. 3.4.1); u is the scaled dual, so it rescales
        # too.
        factor = torch.where(r > 10 * s, 2.0, torch.where(s > 10 * r, 0.5, 1.0)).to(torch.float64)
        rho_t[active] = rho_t[active] * factor
        u = u / factor.reshape(-1, 1, 1)
    return Completion(
        z_out,
        [OPTIMAL if d else NOT_CONVERGED for d in done.tolist()],
        it,
        time.perf_counter() - t0,
    )


def _cvxpy_problem(m: int, n: int, lam: float | None):
    import cvxpy as cp

    x = cp.Variable((m, n))
    mask = cp.Parameter((m, n), nonneg=True)
    observed_values = cp.Parameter((m, n))  # mask * A, so the problem stays DPP
    if lam is None:
        return (
            cp.Problem(cp.Minimize(cp.normNuc(x)), [cp.multiply(mask, x) == observed_values]),
            x,
            mask,
            observed_values,
        )
    # mask and values arrive scaled by 1/sqrt(|Omega|), which keeps the problem DPP (compiled once)
    fit = cp.sum_squares(cp.multiply(mask, x) - observed_values)
    return cp.Problem(cp.Minimize(fit + lam * cp.normNuc(x))), x, mask, observed_values


def cvxpy_solve(
    a: torch.Tensor,
    observed: torch.Tensor,
    lam: float | None = None,
    solver: str = CVXPY_SOLVER,
    tol: float = CVXPY_TOL,
) -> Completion:
    """One CVXPY problem per matrix: exact (lam=None) or regularized, each problem's status
    recorded (OPTIMAL or INACCURATE); raises SolverError on any other status."""
    import cvxpy as cp

    t0 = time.perf_counter()
    b, obs = _prepare(a, observed)
    bsz, m, n = b.shape
    prob, x, mask, vals = _cvxpy_problem(m, n, lam)
    opts = {
        "CLARABEL": {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol},
        "SCS": {"eps_abs": tol, "eps_rel": tol, "max_iters": 200_000},
    }.get(solver, {})
    out = np.zeros((bsz, m, n))
    status = []
    for i in range(bsz):
        w = 1.0 if lam is None else max(int(obs[i].sum()), 1) ** -0.5
        mask.value = w * obs[i].double().numpy()
        vals.value = w * b[i].numpy()
        try:
            prob.solve(solver=solver, **opts)
        except cp.error.SolverError as e:
            raise SolverError(f"CVXPY {solver} failed on problem {i}: {e}") from None
        if prob.status not in (OPTIMAL, INACCURATE) or x.value is None:
            raise SolverError(f"CVXPY {solver} returned status '{prob.status}' on problem {i}")
        status.append(prob.status)
        out[i] = x.value
    result = torch.from_numpy(out)
    # the constraint holds to solver tolerance; make it exact as in the torch solver
    if lam is None:
        result = torch.where(obs, b, result)
    return Completion(result, status, 0, time.perf_counter() - t0)


def complete(
    a: torch.Tensor,
    observed: torch.Tensor,
    lam: float | None = None,
    solver: str = "torch",
    exact: torch.Tensor | None = None,
    cache: SolutionCache | None = None,
) -> Completion:
    """Complete with the exact (lam=None) or regularized problem; solver 'torch' or 'cvxpy'.

    The torch solver starts the regularized problem from the exact solution (`exact`, computed if
    not given), its limit as lam -> 0, with rho = 10 lam: started cold, small lam converges slowly.
    With a `cache`, a torch solve of the same problem made before is read back (its seconds are
    those it took then).
    """
    if solver == "cvxpy":
        return cvxpy_solve(a, observed, lam)
    if solver != "torch":
        raise ValueError(f"unknown solver '{solver}'; use torch or cvxpy")
    key = cache.key(a, observed, lam, exact) if cache else ""
    if cache and (found := cache.get(key)):
        return found
    if lam is None:
        out = torch_admm(a, observed)
    else:
        warm_seconds = 0.0
        if exact is None:
            first = torch_admm(a, observed)
            exact, warm_seconds = first.x, first.seconds
        out = torch_admm(a, observed, lam, rho=10 * lam, init=exact)
        out.seconds += warm_seconds  # the warm start is part of the cost
    if cache:
        cache.put(key, out)
    return out


class SolutionCache:
    """Torch-solver completions in `folder`, one safetensors file per problem batch, named by a
    SHA-256 of everything the solution depends on: the matrices and the observed mask (their
    bytes), lam, the warm start, and `VERSION` (raised whenever `torch_admm` changes what it
    returns, so that no old solution is read for a new solver). Written atomically; a damaged
    file is solved again."""

    VERSION = 1

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def key(
        self,
        a: torch.Tensor,
        observed: torch.Tensor,
        lam: float | None,
        exact: torch.Tensor | None,
    ) -> str:
        h = hashlib.sha256(f"v{self.VERSION} {tuple(a.shape)} lam={lam!r}".encode())
        for t in (a.double(), observed.bool()) + (() if exact is None else (exact.double(),)):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> Completion | None:
        path = self.folder / f"{key}.safetensors"
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata()
                return Completion(
                    f.get_tensor("x"),
                    json.loads(meta["status"]),
                    int(meta["iterations"]),
                    float(meta["seconds"]),
                )
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None  # absent or unreadable: solve again

    def put(self, key: str, c: Completion) -> None:
        meta = {
            "status": json.dumps(c.status),
            "iterations": str(c.iterations),
            "seconds": repr(c.seconds),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(
                self.folder / f"{key}.safetensors", save({"x": c.x.contiguous()}, metadata=meta)
            )
        except OSError:
            pass  # a full disk or a read-only run: the cache only saves time, the solve stands


def method_name(lam: float | None) -> str:
    return "nuclear_norm" if lam is None else f"nuclear_norm_reg_{lam:g}"


def score(x: torch.Tensor, batch: Batch) -> dict[str, float]:
    """L, L_obs, L_mask of completions (B, m, n) against the batch (the one loss definition, in
    float64) and their mean nuclear norm."""
    parts = as_floats(losses(x.double(), batch))
    return {k: parts[k] for k in ("loss", "loss_obs", "loss_mask")} | {
        "nuclear_norm": nuclear_norm(x).mean().item()
    }


def outcome(c: Completion) -> dict[str, int]:
    """A solve's counts for a result row: `failures` (not converged), `inaccurate` (CVXPY)."""
    return {"failures": c.failures, "inaccurate": c.inaccurate}


def score_methods(
    batch: Batch,
    m: int,
    n: int,
    model=None,
    lambdas: Sequence[float] = (),
    solver: str = "torch",
    cache: SolutionCache | None = None,
) -> list[dict[str, Any]]:
    """Score BERT (if given), exact nuclear-norm minimization and each regularized form on one
    batch.
    Every method sees what BERT sees: the rounded values at observed entries. Each row counts the
    problems its solver did not converge on (`failures`) and those solved only inaccurately
    (`inaccurate`, CVXPY)."""
    target = batch.target.reshape(-1, m, n)
    observed = ~batch.mask.reshape(-1, m, n)
    rows = []
    if model is not None:
        t0 = time.perf_counter()
        pred = model.predict(batch.tokens).reshape(-1, m, n)
        rows.append(
            {
                "method": "bert",
                **score(pred, batch),
                "seconds": time.perf_counter() - t0,
                "failures": 0,
                "inaccurate": 0,
            }
        )
    exact = complete(target, observed, None, solver=solver, cache=cache)
    rows.append(
        {
            "method": method_name(None),
            **score(exact.x, batch),
            "seconds": exact.seconds,
            **outcome(exact),
        }
    )
    for lam in lambdas:
        reg = complete(target, observed, lam, solver=solver, exact=exact.x, cache=cache)
        rows.append(
            {
                "method": method_name(lam),
                **score(reg.x, batch),
                "seconds": reg.seconds,
                **outcome(reg),
            }
        )
    return rows
