"""EAD (elastic-net attack) and COV on the linear harness: exact minimal L1 by linear programming,
C&W's L2 at beta = 0, the shrinkage-thresholding operator, the decision rules, and regression
tests for the bugs known in peer implementations."""

import numpy as np
import pytest
import torch
from linear_harness import LinearClassifier, ProbabilityModel, make_problem
from scipy.optimize import linprog

from advx.attacks._core import lp_norm, margin
from advx.attacks.cw import carlini_wagner_l2
from advx.attacks.ead import cov, ead, elastic_net_distance, shrinkage_threshold, step_size


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def exact_l1(model, inputs, labels, targeted=False):
    """min ||r||_1 s.t. x + r in [0, 1] and the attack's goal (untargeted: some class j beats
    y, the best over j; targeted: the target beats every other class), by HiGHS."""
    w = model.linear.weight.detach().double().numpy()
    b = model.linear.bias.detach().double().numpy()
    k, d = w.shape
    out = []
    for x, y in zip(inputs.reshape(len(inputs), -1).double().numpy(), labels.tolist()):
        bounds = [(0, 1 - v) for v in x] + [(0, v) for v in x]  # r = r_plus - r_minus
        if targeted:
            goals = [[j for j in range(k) if j != y]]  # z_y >= z_j for all j
            sign = 1.0
        else:
            goals = [[j] for j in range(k) if j != y]  # z_j >= z_y for one j
            sign = -1.0
        best = np.inf
        for others in goals:
            # sign * (w_y - w_j) . (x + r) + sign * (b_y - b_j) >= 0  ->  A_ub [r+, r-] <= b_ub
            a = sign * (w[y] - w[others])
            c0 = sign * (b[y] - b[others]) + a @ x
            res = linprog(
                np.ones(2 * d),
                A_ub=np.hstack([-a, a]),
                b_ub=c0,
                bounds=bounds,
                method="highs",
            )
            if res.status == 0:
                best = min(best, res.fun)
        out.append(best)
    return torch.tensor(out)


def edge_problem(n=10, k=3, seed=0):
    """Points spread over the box, some pixels near 0 or 1, so that the box binds in the LP."""
    model, _, _ = make_problem(n=n, k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    x = (0.5 + 0.35 * torch.randn(n, 1, 4, 4, generator=gen)).clamp(0.0, 1.0)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


# S_beta thresholds at beta itself (Eq. 18), so beta must stay below the smallest optimum here.
L1_RUN = {"beta": 5e-3, "lr": 1e-3, "steps": 300, "decision_rule": "l1"}


@pytest.mark.parametrize("problem", ["centre", "edge"])
def test_l1_rule_within_five_percent_of_exact_minimal_l1(problem):
    """Two classes: the problem (16) is then convex (with more classes the untargeted hinge on
    max_{j != y} z_j is not, and EAD may head for a class that is not the L1-nearest)."""
    if problem == "centre":
        model, x, y = make_problem(n=12, k=2, seed=1)
    else:
        model, x, y = edge_problem(k=2)
    adv = ead(model, x, y, **L1_RUN)
    assert (model(adv).argmax(1) != y).all()
    optimum = exact_l1(model, x, y)
    found = lp_norm(adv - x, 1).double()
    assert (found >= optimum * (1 - 1e-4) - 1e-6).all()
    assert (found <= 1.05 * optimum + 1e-4).all(), (found / optimum).max()


def test_targeted_l1_rule_within_five_percent_of_exact_minimal_l1():
    """Targeted, the hinge on max_{j != t} z_j - z_t is convex: four classes."""
    model, x, y = make_problem(n=8, k=4, seed=6)
    t = (y + 1) % 4
    adv = ead(model, x, t, targeted=True, **L1_RUN)
    assert (model(adv).argmax(1) == t).all()
    found, optimum = lp_norm(adv - x, 1).double(), exact_l1(model, x, t, targeted=True)
    assert (found >= optimum * (1 - 1e-4) - 1e-6).all()
    assert (found <= 1.05 * optimum + 1e-4).all(), (found / optimum).max()


def test_beta_zero_reaches_cw_l2_within_five_percent():
    model, x, y = make_problem(n=12, k=3, seed=4)
    kw = {"steps": 300, "lr": 2e-3}
    cw = lp_norm(carlini_wagner_l2(model, x, y, **kw) - x, 2)
    adv = ead(model, x, y, beta=0.0, decision_rule="l2", **kw)
    assert (model(adv).argmax(1) != y).all()
    assert (lp_norm(adv - x, 2) <= 1.05 * cw + 1e-4).all()


def test_shrinkage_threshold_matches_eq_18_including_the_box():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(500, generator=gen, dtype=torch.float64)
    x0[:20] = 0.0
    x0[20:40] = 1.0
    z = x0 + 0.6 * torch.randn(500, generator=gen, dtype=torch.float64)
    beta = 0.05
    got = shrinkage_threshold(z, x0, beta)
    for zi, xi, gi in zip(z.tolist(), x0.tolist(), got.tolist()):
        if zi - xi > beta:
            expected = min(zi - beta, 1.0)
        elif zi - xi < -beta:
            expected = max(zi + beta, 0.0)
        else:
            expected = xi
        assert gi == pytest.approx(expected, abs=1e-12)
    # the proximal characterisation (Eq. 20): argmin over u in [0, 1] of the prox objective
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    for zi, xi, gi in list(zip(z.tolist(), x0.tolist(), got.tolist()))[:60]:
        objective = 0.5 * (grid - zi) ** 2 + beta * (grid - xi).abs()
        assert gi == pytest.approx(grid[objective.argmin()].item(), abs=1e-5)
    assert got.min() >= 0 and got.max() <= 1


def test_step_size_decays_with_square_root():
    assert step_size(0.01, 0, 100) == 0.01
    assert step_size(0.01, 75, 100) == pytest.approx(0.005)
    assert step_size(0.01, 99, 100) == pytest.approx(0.001)


def test_decision_rules_pick_the_least_distortion_of_the_same_iterates():
    model, x, y = edge_problem(k=3, seed=6)
    kw = {"beta": 1e-2, "steps": 100, "lr": 1e-2, "binary_search_steps": 5, "c_init": 0.1}
    advs = {rule: ead(model, x, y, decision_rule=rule, **kw) for rule in ("en", "l1", "l2")}
    l1 = {r: lp_norm(a - x, 1) for r, a in advs.items()}
    l2 = {r: lp_norm(a - x, 2) for r, a in advs.items()}
    en = {r: elastic_net_distance(a - x, kw["beta"]) for r, a in advs.items()}
    fooled = model(advs["en"]).argmax(1) != y
    assert fooled.all()
    for rule, adv in advs.items():  # the rules choose among the same successful iterates
        assert torch.equal(model(adv).argmax(1) != y, fooled), rule
    tol = 1e-6
    for other in ("en", "l2"):
        assert (l1["l1"] <= l1[other] + tol).all()
    for other in ("en", "l1"):
        assert (l2["l2"] <= l2[other] + tol).all()
        assert (en["en"] <= en[other.replace("en", "l2")] + tol).all()
    # the rules do choose differently on this problem (the test above could fail)
    assert (l1["l1"] < l1["l2"] - 1e-4).any()


def test_ista_also_converges():
    model, x, y = make_problem(n=8, k=3, seed=7)
    adv = ead(model, x, y, fista=False, **L1_RUN)
    assert (model(adv).argmax(1) != y).all()
    assert (lp_norm(adv - x, 1).double() <= 1.1 * exact_l1(model, x, y) + 1e-4).all()


# ---------------------------------------------------------------- regressions of peer bugs


def test_success_is_judged_at_the_iterate_not_the_slack_point():
    """With momentum, the slack point y_k crosses the boundary before x_k does; an attack that
    judged success at y_k (as foolbox did before its fix) would return a non-adversarial x_k."""
    model, x, y = make_problem(n=16, k=2, seed=8)
    for kw in ({"lr": 0.05, "steps": 50}, {"lr": 0.02, "steps": 200, "binary_search_steps": 3}):
        adv = ead(model, x, y, beta=1e-3, **kw)
        changed = (adv != x).flatten(1).any(1)
        assert changed.any()
        assert (model(adv).argmax(1)[changed] != y[changed]).all()


def test_confidence_is_applied_per_sample_in_a_batch():
    """One peer subtracts kappa from whole columns of the logits (``logits[:, labels]``), which
    mixes up the samples of a batch; here each sample's margin is its own."""
    model, x, y = make_problem(n=6, k=4, seed=9)
    t = (y + 1 + torch.arange(6) % 3) % 4  # different targets within the batch
    kw = {"steps": 60, "lr": 1e-2, "abort_early": False, "binary_search_steps": 4}
    kappa = torch.tensor([0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
    batch = ead(model, x, t, targeted=True, confidence=kappa, **kw)
    single = torch.cat(
        [
            ead(model, x[i : i + 1], t[i : i + 1], targeted=True, confidence=float(kappa[i]), **kw)
            for i in range(6)
        ]
    )
    assert torch.allclose(batch, single, atol=1e-6)
    assert (margin(model(batch), t, targeted=True) <= -kappa + 1e-5).all()
    scalar = ead(model, x, t, targeted=True, confidence=0.5, **kw)
    assert (margin(model(scalar), t, targeted=True) <= -0.5 + 1e-5).all()


def test_attack_works_on_logits_and_refuses_probabilities():
    model, x, y = make_problem(n=6, k=3, seed=10)
    with pytest.raises(ValueError, match="logits"):
        ead(ProbabilityModel(model), x, y, steps=5)
    # a margin of 2 in logits: impossible for probabilities, reached here
    adv = ead(model, x, y, confidence=2.0, steps=200, lr=1e-2)
    assert (margin(model(adv), y) <= -2.0 + 1e-5).all()


# ---------------------------------------------------------------- the attack contract


@pytest.mark.parametrize("abort_early", [True, False])
def test_batch_equals_per_sample(abort_early):
    model, x, y = make_problem(n=5, k=3, seed=11)
    kw = {"steps": 60, "lr": 1e-2, "binary_search_steps": 3, "abort_early": abort_early}
    batch = ead(model, x, y, **kw)
    single = torch.cat([ead(model, x[i : i + 1], y[i : i + 1], **kw) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-6)


def test_contract_box_inputs_model_and_originals():
    model, x, y = make_problem(n=6, k=3, seed=12, dtype=torch.float64)
    model.train()
    x_copy = x.clone()
    wrong = y.clone()
    wrong[0] = (y[0] + 1) % 3  # sample 0 is already misclassified
    for attack in (ead, cov):
        adv = attack(model, x, wrong, steps=20, binary_search_steps=2)
        assert adv.shape == x.shape and adv.dtype == torch.float64
        assert torch.equal(x, x_copy)
        assert torch.equal(adv[0], x[0])
        assert adv.min() >= 0 and adv.max() <= 1
        assert model.training and all(
            p.grad is None and p.requires_grad for p in model.parameters()
        )
    # one step with a tiny constant cannot succeed: the originals come back
    assert torch.equal(ead(model, x, y, steps=1, binary_search_steps=1), x)


def test_mlp_input_shape():
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(3, 8, generator=gen)
    model = LinearClassifier(w, -0.5 * w.sum(1), (8,))
    x = (0.5 + 0.05 * torch.randn(4, 8, generator=gen)).clamp(0, 1)
    y = model(x).argmax(1)
    adv = ead(model, x, y, steps=100)
    assert adv.shape == (4, 8) and (model(adv).argmax(1) != y).all()


def test_cov_succeeds_and_its_l1_term_is_a_weak_lever():
    model, x, y = make_problem(n=8, k=3, seed=14)
    kw = {"steps": 100, "lr": 5e-3, "binary_search_steps": 5}
    plain = cov(model, x, y, beta=0.0, **kw)
    l1_weighted = cov(model, x, y, beta=1e-2, **kw)
    for adv in (plain, l1_weighted):
        assert (model(adv).argmax(1) != y).all()
    # with beta = 0 and the L2 rule COV is C&W
    assert torch.allclose(
        cov(model, x, y, beta=0.0, decision_rule="l2", **kw),
        carlini_wagner_l2(model, x, y, **kw),
        atol=1e-6,
    )


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    for kw, name in [
        ({"beta": -1.0}, "beta"),
        ({"c_init": 0.0}, "c_init"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"binary_search_steps": 0}, "binary"),
        ({"decision_rule": "l0"}, "decision_rule"),
        ({"confidence": -1.0}, "confidence"),
    ]:
        with pytest.raises(ValueError, match=name):
            ead(model, x, y, **kw)
        if name != "confidence":
            with pytest.raises(ValueError, match=name):
                cov(model, x, y, **kw)
    with pytest.raises(ValueError, match="confidence"):
        ead(model, x, y, confidence=torch.zeros(3))
