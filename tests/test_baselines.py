"""Nuclear-norm baselines: the batched torch solver against CVXPY, recovery, limits, edge cases."""

import json

import pytest
import torch

from abrupt import baselines as B
from abrupt.config import DataConfig
from abrupt.data import Batch, seeded_batch


def problems(count=24, p_mask=0.3, seed=0, **data):
    batch = seeded_batch(DataConfig(p_mask=p_mask, **data), count, seed)
    m, n = data.get("m", 7), data.get("n", 7)
    return batch.target.reshape(-1, m, n).double(), ~batch.mask.reshape(-1, m, n)


def lmask(x, a, hidden):
    """L_mask of completions x of targets a through the library's one loss definition."""
    batch = Batch(tokens=a.flatten(1).long(), target=a.flatten(1), mask=hidden.flatten(1), matrix=a)
    return B.score(x, batch)["loss_mask"]


def test_svt_is_the_nuclear_norm_prox():
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    y = B.svt(x, 0.7)
    s_x, s_y = torch.linalg.svdvals(x), torch.linalg.svdvals(y)
    torch.testing.assert_close(s_y, torch.clamp(s_x - 0.7, min=0))


def test_exact_agrees_with_cvxpy():
    a, obs = problems()
    ours = B.torch_admm(a, obs, tol=1e-6)
    ref = B.complete(a, obs, solver="cvxpy")
    assert ours.failures == 0
    # Same optimal value per problem. The minimizer itself can be a tie set (problem 17 here: equal
    # nuclear norm to 1e-6, entries 0.17 apart), so the MSE is held to the stated 5% only.
    torch.testing.assert_close(B.nuclear_norm(ours.x), B.nuclear_norm(ref.x), rtol=0, atol=1e-4)
    hidden = ~obs
    ls_ours, ls_ref = lmask(ours.x, a, hidden), lmask(ref.x, a, hidden)
    assert abs(ls_ours - ls_ref) <= 0.05 * ls_ref
    assert torch.equal(ours.x[obs], a[obs])


@pytest.mark.parametrize("lam", [5e-4, 1e-2])
def test_regularized_agrees_with_cvxpy(lam):
    a, obs = problems(16, seed=3)
    ours = B.complete(a, obs, lam)
    ref = B.complete(a, obs, lam, solver="cvxpy")
    assert ours.failures == 0

    def objective(x):
        count = obs.flatten(1).sum(1)
        fit = ((x - a) ** 2 * obs).flatten(1).sum(1) / count
        return fit + lam * B.nuclear_norm(x)

    torch.testing.assert_close(objective(ours.x), objective(ref.x), rtol=1e-3, atol=1e-5)
    hidden = ~obs
    ls_ours, ls_ref = lmask(ours.x, a, hidden), lmask(ref.x, a, hidden)
    assert abs(ls_ours - ls_ref) <= 0.05 * ls_ref


def test_exact_recovery_at_low_p_mask():
    # Well-conditioned rank-1 matrices with few entries hidden are recovered exactly.
    g = torch.Generator().manual_seed(0)
    u = 0.5 + torch.rand(8, 7, 1, generator=g, dtype=torch.float64)
    v = 0.5 + torch.rand(8, 7, 1, generator=g, dtype=torch.float64)
    a = u @ v.mT
    obs = torch.rand(8, 7, 7, generator=g) > 0.1
    out = B.torch_admm(a, obs, tol=1e-8)
    assert out.failures == 0
    torch.testing.assert_close(out.x, a, atol=1e-5, rtol=0)


def test_regularized_tends_to_exact_as_lambda_vanishes():
    a, obs = problems(8, seed=5)
    exact = B.torch_admm(a, obs, tol=1e-6).x
    target = B.nuclear_norm(exact)
    norm_gaps, misfits = [], []
    for lam in (1e-2, 1e-3, 1e-4):
        x = B.complete(a, obs, lam, exact=exact).x
        norm_gaps.append((B.nuclear_norm(x) - target).abs().max().item())
        misfits.append(((x - a) * obs).abs().max().item())
    # the nuclear-norm gap and the constraint violation both shrink in proportion to lambda
    for gaps in (norm_gaps, misfits):
        assert gaps[0] > 5 * gaps[1] > 25 * gaps[2]
    assert norm_gaps[2] < 0.02 and misfits[2] < 0.002


def test_edge_cases():
    a, obs = problems(4)
    # p_mask = 0: the observed matrix is the answer
    full = torch.ones_like(obs)
    torch.testing.assert_close(B.complete(a, full).x, a)
    # everything hidden: the minimum-norm completion is 0, for both forms
    none = torch.zeros_like(obs)
    assert B.complete(a, none).x.abs().max() == 0
    assert B.complete(a, none, 1e-3).x.abs().max() == 0
    # a fully hidden row is filled with zeros (adding a row never lowers the nuclear norm)
    obs2 = obs.clone()
    obs2[:, 2, :] = False
    out = B.complete(a, obs2)
    assert out.failures == 0 and out.x[:, 2, :].abs().max() < 1e-3


def test_non_convergence_is_reported():
    a, obs = problems(6)
    out = B.torch_admm(a, obs, max_iter=3, tol=1e-12)
    assert out.failures == 6


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        B.complete(torch.zeros(2, 3, 3), torch.ones(2, 3, 4, dtype=torch.bool))


def solve_with_statuses(monkeypatch, statuses: dict[int, str]) -> None:
    """CVXPY reports `statuses[i]` for the i-th problem it solves (its solution is kept), as a
    solver
    that stops short of its tolerance does."""
    cp = pytest.importorskip("cvxpy")
    original, calls = cp.Problem.solve, []

    def solve(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        if len(calls) in statuses:
            self._status = statuses[len(calls)]
        calls.append(1)
        return value

    monkeypatch.setattr(cp.Problem, "solve", solve)


def test_an_inaccurate_cvxpy_solve_is_recorded_and_counted_apart(monkeypatch):
    a, obs = problems(4)
    solve_with_statuses(monkeypatch, {1: "optimal_inaccurate"})
    out = B.complete(a, obs, solver="cvxpy")
    assert out.status == ["optimal", "optimal_inaccurate", "optimal", "optimal"]
    assert (
        out.inaccurate == 1
        and out.failures == 0
        and out.converged.tolist() == [True, False, True, True]
    )


def test_every_solver_outcome_short_of_optimal_is_visible(monkeypatch, capsys):
    """Inaccurate (CVXPY) and not converged (torch) reach the result rows, the baseline command and
    the compare report; any other CVXPY status is an error, never a solution."""
    from abrupt.analysis import compare
    from abrupt.cli import main

    a, obs = problems(6)
    out = B.torch_admm(a, obs, max_iter=200, tol=1e-6)
    assert (
        out.failures == 3 and out.status.count("optimal") == 6 - out.failures
    )  # some converged, some not
    assert out.converged.tolist() == [s == "optimal" for s in out.status] and out.inaccurate == 0

    solve_with_statuses(monkeypatch, {0: "optimal_inaccurate", 2: "optimal_inaccurate"})
    batch = seeded_batch(DataConfig(p_mask=0.3), 4, 0)
    rows = B.score_methods(batch, 7, 7, solver="cvxpy")
    assert [(r["method"], r["failures"], r["inaccurate"]) for r in rows] == [("nuclear_norm", 0, 2)]
    text = compare.render(
        {
            "step": 1,
            "rows": [{"p_mask": 0.3, **r} for r in rows],
            "true_nuclear_norm": 1.0,
            "flips": {"bert_better_at": [], "flips_at": []},
        }
    )[0].text
    assert "solved only inaccurately (CVXPY optimal_inaccurate): 2" in text

    solve_with_statuses(monkeypatch, {2: "optimal_inaccurate"})
    assert main(["baseline", "--p-mask", "0.3", "--n", "4", "--solver", "cvxpy", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["inaccurate"] == 1 and row["failures"] == 0

    solve_with_statuses(monkeypatch, {0: "infeasible_inaccurate"})
    with pytest.raises(B.SolverError, match="status 'infeasible_inaccurate' on problem 0"):
        B.complete(a, obs, solver="cvxpy")
