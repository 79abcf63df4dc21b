"""minimal_eps on the linear harness: with two classes FGM and I-FGM step along the boundary
normal, so the smallest fooling eps is the closed-form distance |z_y - z_o| / ||w_y - w_o||_q."""

import math

import pytest
import torch
from linear_harness import make_problem, minimal_distance

from advx.attacks import fgm, ifgm
from advx.attacks._core import INF, lp_norm
from advx.attacks.minimal import as_minimal_attack, minimal_eps, table4_grid

FINE = torch.arange(1, 2001, dtype=torch.float64) * 1e-4  # 1e-4 .. 0.2


@pytest.mark.parametrize("attack", ["fgm", "ifgm"])
@pytest.mark.parametrize("norm", [2.0, INF])
def test_equals_closed_form_within_grid_resolution(attack, norm):
    model, x, y = make_problem(n=10, k=2, seed=1)
    exact = minimal_distance(model, x, y, norm).double()
    assert exact.max() < 0.2
    adv, eps = minimal_eps(attack, model, x, y, norm=norm, grid=FINE, return_eps=True)
    assert (eps >= exact - 1e-6).all() and (eps <= exact + 1e-4 + 1e-6).all()
    assert (model(adv).argmax(1) != y).all()
    assert (lp_norm(adv - x, norm).double() <= eps * (1 + 1e-4) + 1e-6).all()


def test_table4_default_grid_and_exhaustive_scan_agree():
    model, x, y = make_problem(n=8, k=2, seed=2)
    exact = minimal_distance(model, x, y, 2).double()
    _, eps = minimal_eps(fgm, model, x, y, norm=2, return_eps=True)
    _, scanned = minimal_eps(fgm, model, x, y, norm=2, refine_steps=0, return_eps=True)
    assert torch.equal(eps, scanned)
    assert (eps >= exact).all() and (eps <= exact + 0.01 + 1e-9).all()  # resolution 1e-2
    grid = table4_grid(INF)
    assert grid.numel() == 1000 and grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(1)
    assert table4_grid(1)[-1] == pytest.approx(1000)


def test_batch_equals_per_sample_and_inputs_untouched():
    model, x, y = make_problem(n=5, k=3, seed=3)
    x_copy = x.clone()
    batch, eps = minimal_eps(ifgm, model, x, y, norm=INF, grid=FINE, steps=5, return_eps=True)
    assert torch.equal(x, x_copy)
    for i in range(5):
        single, e = minimal_eps(
            ifgm, model, x[i : i + 1], y[i : i + 1], norm=INF, grid=FINE, steps=5, return_eps=True
        )
        assert torch.allclose(single, batch[i : i + 1], atol=1e-7) and e.item() == eps[i].item()


def test_originals_returned_where_the_grid_never_succeeds():
    model, x, y = make_problem(n=4, k=2, seed=4)
    tiny = [1e-7, 2e-7]
    adv, eps = minimal_eps("fgm", model, x, y, norm=2, grid=tiny, return_eps=True)
    assert torch.equal(adv, x) and all(math.isinf(e) for e in eps.tolist())


def test_minimal_registry_entry_runs_through_the_runner():
    from advx.evaluation.runner import run_attack

    model, x, y = make_problem(n=6, k=2, seed=5)
    info = as_minimal_attack("ifgm", grid=FINE)
    assert info.name == "ifgm-minimal" and info.minimal_norm
    result = run_attack(model, x, y, info, norm=2, progress=False)
    exact = minimal_distance(model, x, y, 2).double().numpy()
    assert result.summary["success_rate"] == 1.0
    assert (result.samples["l2"] <= exact + 1e-4 + 1e-6).all()


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=3, k=2)
    with pytest.raises(ValueError, match="bounded"):
        minimal_eps("ddn", model, x, y, norm=2)
    with pytest.raises(ValueError, match="eps"):
        minimal_eps("fgm", model, x, y, norm=2, eps=0.1)
    with pytest.raises(ValueError, match="grid"):
        minimal_eps("fgm", model, x, y, norm=2, grid=[0.2, 0.1])
    with pytest.raises(ValueError, match="grid"):
        minimal_eps("fgm", model, x, y, norm=3, grid=None)
    with pytest.raises(ValueError, match="refine_steps"):
        minimal_eps("fgm", model, x, y, norm=2, refine_steps=-1)


def test_runner_all_targets_reports_best_average_worst():
    """targets='all' attacks every (sample, other class) pair; with FGM-minimal on a linear
    model the best / worst case are the nearest / farthest target's closed-form distance."""
    import numpy as np

    from advx.evaluation.runner import run_attack

    model, x, y = make_problem(n=4, k=3, seed=6)
    grid = torch.arange(1, 4001, dtype=torch.float64) * 1e-4
    result = run_attack(
        model,
        x,
        y,
        as_minimal_attack("fgm", grid=grid),
        norm=2,
        targeted=True,
        targets="all",
        progress=False,
    )
    cases = result.summary["target_cases"]
    assert cases["samples"] == 4 and cases["targets_per_sample"] == 2
    l2 = result.samples["l2"].reshape(4, 2)
    fooled = result.samples["success"].reshape(4, 2).astype(bool)
    assert fooled.all() and cases["average"]["success_rate"] == 1.0
    assert cases["best"]["l2"] == pytest.approx(l2.min(1).mean())
    assert cases["worst"]["l2"] == pytest.approx(l2.max(1).mean())
    assert cases["average"]["l2"] == pytest.approx(l2.mean())
    expected_en = (result.samples["l2"] ** 2 + 1e-3 * result.samples["l1"]).mean()
    assert cases["average"]["en"] == pytest.approx(expected_en)
    assert result.summary["mean_norms"]["en"] == pytest.approx(expected_en)
    targets = result.samples["target"].reshape(4, 2)
    assert (targets != y.numpy()[:, None]).all() and np.unique(targets[0]).size == 2
