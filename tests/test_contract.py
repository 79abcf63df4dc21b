"""The attack contract, checked for every entry of the registry (README, "The attack contract").

A new attack is covered the moment it is registered: each case runs the attack with its
registered ``quick`` hyperparameters on small models with BatchNorm and Dropout (left in train
mode), for every norm it accepts, batch sizes 1, 3 and 8 and the input shapes (N, D),
(N, 1, 28, 28) and (N, 3, 32, 32).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import NoAutograd
from torch import nn

from advx.attacks import ATTACKS
from advx.attacks._core import lp_norm
from advx.attacks.registry import AttackInfo

INF = float("inf")
NUM_CLASSES = 10
SHAPES = {"flat": (16,), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
BATCH_SIZES = (1, 3, 8)
EPS = {1.0: 4.0, 2.0: 1.0, 3.0: 0.6, INF: 0.1}
BUDGET_SLACK = 1e-5


def make_model(shape: tuple[int, ...], seed: int = 0, dtype=torch.float32) -> nn.Module:
    """A small classifier with BatchNorm and Dropout for inputs of ``shape`` (one sample)."""
    torch.manual_seed(seed)
    if len(shape) == 1:
        model = nn.Sequential(
            nn.Linear(shape[0], 24),
            nn.BatchNorm1d(24),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(24, NUM_CLASSES),
        )
    else:
        channels, height, width = shape
        features = 4 * ((height - 3) // 2 + 1) * ((width - 3) // 2 + 1)
        model = nn.Sequential(
            nn.Conv2d(channels, 4, 3, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(features, NUM_CLASSES),
        )
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.to(dtype).train()


def make_batch(shape, n: int, seed: int = 1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand((n, *shape), generator=generator, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return inputs, labels


def norms_of(info: AttackInfo) -> tuple[float, ...]:
    return info.norms + ((3.0,) if info.any_p else ())


def settings(info: AttackInfo, norm: float, *, generator_seed: int | None = None) -> dict:
    """The attack's quick hyperparameters, with a budget for bounded attacks, the norm where
    the function takes one and a fresh generator where it takes one."""
    kwargs = dict(info.quick)
    if info.takes_norm:
        kwargs["norm"] = norm
    if not info.minimal_norm:
        kwargs["eps"] = EPS[norm]
    if info.takes_generator:
        kwargs["generator"] = torch.Generator().manual_seed(generator_seed or 0)
    return kwargs


def model_for(info: AttackInfo, model: nn.Module) -> nn.Module:
    return NoAutograd(model) if info.black_box else model


def run(info: AttackInfo, model, inputs, labels, norm, **extra):
    model = model_for(info, model)
    return info.function(model, inputs, labels, **settings(info, norm), **extra)


CASES = [
    pytest.param(name, norm, id=f"{name}-L{norm:g}")
    for name, info in sorted(ATTACKS.items())
    for norm in norms_of(info)
]


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("name,norm", CASES)
def test_output_and_model_state(name, norm, shape, batch):
    """Shape, dtype, device and box of the output; inputs untouched; a train-mode model comes
    back in train mode with its buffers, parameters and requires_grad flags unchanged and no
    parameter gradients; a bounded attack keeps its budget."""
    info = ATTACKS[name]
    model = make_model(SHAPES[shape])
    model[0].bias.requires_grad_(False)  # mixed flags must come back as they were
    flags = [p.requires_grad for p in model.parameters()]
    before = _state(model)
    inputs, labels = make_batch(SHAPES[shape], batch)
    original = inputs.clone()

    adv = run(info, model, inputs, labels, norm)

    assert adv.shape == inputs.shape and adv.dtype == inputs.dtype
    assert adv.device == inputs.device
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(inputs, original), "the attack modified its inputs"
    assert model.training, "the model was not restored to train mode"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "parameter gradients accumulated"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "buffers or weights changed"
    if not info.minimal_norm:
        assert (lp_norm(adv - inputs, norm) <= EPS[norm] * (1 + BUDGET_SLACK) + 1e-6).all()


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("name,norm", CASES)
def test_float64(name, norm, shape):
    info = ATTACKS[name]
    model = make_model(SHAPES[shape], dtype=torch.float64)
    inputs, labels = make_batch(SHAPES[shape], 3, dtype=torch.float64)
    adv = run(info, model, inputs, labels, norm)
    assert adv.dtype == torch.float64
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("name,norm", CASES)
def test_batch_equals_samples_or_generator_reproduces(name, norm, shape):
    """Deterministic attacks: the batch result equals the per-sample results (float64, so that
    only the attack, not summation order, could make them differ). Random attacks: the same
    generator seed gives the same result."""
    info = ATTACKS[name]
    model = make_model(SHAPES[shape], dtype=torch.float64).eval()
    inputs, labels = make_batch(SHAPES[shape], 3, dtype=torch.float64)
    if info.randomized:
        first = run(info, model, inputs, labels, norm)
        second = run(info, model, inputs, labels, norm)
        assert torch.equal(first, second)
        return
    batched = run(info, model, inputs, labels, norm)
    for k in range(inputs.shape[0]):
        single = run(info, model, inputs[k : k + 1], labels[k : k + 1], norm)
        torch.testing.assert_close(single[0], batched[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,norm", CASES)
def test_integer_labels_of_any_dtype(name, norm):
    info = ATTACKS[name]
    model = make_model(SHAPES["flat"]).eval()
    inputs, labels = make_batch(SHAPES["flat"], 3)
    if info.randomized:
        return  # the int64 / int32 comparison below needs a deterministic attack
    expected = run(info, model, inputs, labels, norm)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(run(info, model, inputs, labels.to(dtype), norm), expected)


def _tuple_model(model):
    class TupleOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x), x

    return TupleOutput()


def _softmax_model(model):
    return nn.Sequential(model, nn.Softmax(dim=1))


def _bad_cases():
    """(case id, what to change, a word the error must contain)."""
    nan = float("nan")
    return [
        ("inputs-above-one", lambda m, x, y: (m, x + 1.5, y), "inputs"),
        ("inputs-below-zero", lambda m, x, y: (m, x - 1.5, y), "inputs"),
        ("inputs-nan", lambda m, x, y: (m, x.index_fill(0, torch.tensor([0]), nan), y), "inputs"),
        ("inputs-inf", lambda m, x, y: (m, x.index_fill(0, torch.tensor([0]), INF), y), "inputs"),
        ("inputs-integer", lambda m, x, y: (m, (x * 255).to(torch.uint8), y), "inputs"),
        ("inputs-not-tensor", lambda m, x, y: (m, x.numpy(), y), "inputs"),
        ("inputs-rank-1", lambda m, x, y: (m, x[0].flatten(), y), "inputs"),
        ("inputs-rank-3", lambda m, x, y: (m, x[:, 0], y), "inputs"),
        ("inputs-rank-5", lambda m, x, y: (m, x[:, None], y), "inputs"),
        ("inputs-float64-model-float32", lambda m, x, y: (m, x.double(), y), "dtype"),
        ("labels-out-of-range", lambda m, x, y: (m, x, y + NUM_CLASSES), "labels"),
        ("labels-negative", lambda m, x, y: (m, x, y - NUM_CLASSES), "labels"),
        ("labels-float", lambda m, x, y: (m, x, y.float()), "labels"),
        ("labels-wrong-length", lambda m, x, y: (m, x, y[:-1]), "labels"),
        ("labels-2d", lambda m, x, y: (m, x, y[:, None]), "labels"),
        ("model-probabilities", lambda m, x, y: (_softmax_model(m), x, y), "probabilities"),
        ("model-returns-tuple", lambda m, x, y: (_tuple_model(m), x, y), "model"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("case,change,word", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_input_is_refused_naming_the_argument(name, case, change, word):
    info = ATTACKS[name]
    model = make_model(SHAPES["mnist"]).eval()
    inputs, labels = make_batch(SHAPES["mnist"], 3)
    model, inputs, labels = change(model, inputs, labels)
    with pytest.raises((ValueError, TypeError), match=re.compile(word, re.IGNORECASE)):
        run(info, model, inputs, labels, info.norms[0])


@pytest.mark.parametrize("name", sorted(n for n, i in ATTACKS.items() if i.takes_norm))
def test_unknown_norm_is_refused(name):
    info = ATTACKS[name]
    model = make_model(SHAPES["flat"]).eval()
    inputs, labels = make_batch(SHAPES["flat"], 2)
    kwargs = settings(info, info.norms[0])
    for bad in ("l7x", 0.5, True):
        kwargs["norm"] = bad
        with pytest.raises((ValueError, TypeError), match="norm"):
            info.function(model_for(info, model), inputs, labels, **kwargs)


def test_every_registered_attack_is_covered():
    covered = {case.values[0] for case in CASES}
    assert covered == set(ATTACKS)
    for info in ATTACKS.values():
        assert info.paper, f"{info.name}: the registry names no paper"


def test_registry_entries_are_frozen():
    """AttackInfo is frozen and its quick settings are read-only."""
    info = copy.copy(ATTACKS["fgm"])
    with pytest.raises(AttributeError):
        info.kind = "bounded"  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.quick["steps"] = 1  # type: ignore[index]
