"""Transfer attacks (thesis Sec. 4.3.7): examples made on sources, judged on the target."""

import numpy as np
import pytest
import torch
from torch import nn

from advx.attacks import get_attack
from advx.evaluation import Ensemble, ResultsStore, run_attack, transfer
from advx.evaluation.transfer import transferred_attack


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def _data(n=10):
    x = torch.rand(n, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x


@pytest.mark.parametrize(
    "attack, settings, targeted, targets",
    [
        ("ifgm", {"eps": 0.2, "steps": 5, "step_size": 0.05}, False, None),
        ("ead", {"binary_search_steps": 2, "steps": 20}, True, "all"),
        ("cw-l2", {"binary_search_steps": 2, "steps": 20}, True, "next"),
    ],
)
def test_target_as_its_own_source_equals_a_direct_attack(attack, settings, targeted, targets):
    model = _mlp(0)
    x = _data()
    y = model(x).argmax(1).detach()
    common = dict(
        hyperparameters=settings, targeted=targeted, targets=targets, batch_size=4, progress=False
    )
    direct = run_attack(model, x, y, attack, **common)
    moved = transfer(model, model, attack, x, y, **common)
    torch.testing.assert_close(moved.adversarials, direct.adversarials, rtol=0, atol=0)
    for column in ("success", "adv_pred", "clean_pred", "l1", "l2", "linf"):
        np.testing.assert_array_equal(moved.samples[column], direct.samples[column])
    if targets == "all":
        assert moved.summary["target_cases"] == direct.summary["target_cases"]
    assert moved.samples["forwards"].sum() == 0  # the target itself is never queried


def test_examples_are_made_on_the_sources_and_judged_on_the_target(tmp_path):
    sources, target = [_mlp(1), _mlp(2), _mlp(3)], _mlp(4)
    x = _data(12)
    y = target(x).argmax(1).detach()
    settings = {"eps": 0.3, "steps": 5, "step_size": 0.1}
    store = ResultsStore(tmp_path / "runs.sqlite")
    result = transfer(
        sources,
        target,
        "ifgm",
        x,
        y,
        source_names=["a", "b", "c"],
        target_name="t",
        hyperparameters=settings,
        store=store,
        progress=False,
    )
    ensemble = Ensemble(sources)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x), (sources[0](x) + sources[1](x) + sources[2](x)) / 3)
    expected = get_attack("ifgm").function(ensemble, x, y, norm=float("inf"), **settings)
    torch.testing.assert_close(result.adversarials, expected)
    with torch.no_grad():
        fooled = (target(expected).argmax(1) != y).numpy()
    np.testing.assert_array_equal(result.samples["success"], fooled)
    assert result.config["transfer"] == {"sources": ["a", "b", "c"], "target": "t"}
    assert result.config["model"] == "t"
    again = transfer(
        sources,
        target,
        "ifgm",
        x,
        y,
        source_names=["a", "b", "c"],
        target_name="t",
        hyperparameters=settings,
        store=store,
        progress=False,
    )
    assert again.run_id == result.run_id and not again.computed.any()  # resumed from the store
    np.testing.assert_array_equal(again.samples["success"], result.samples["success"])


def test_transferred_attack_keeps_the_attacks_signature():
    info = transferred_attack(get_attack("ead"), _mlp(0))
    assert info.takes_norm == get_attack("ead").takes_norm
    assert info.name == "ead" and info.kind == get_attack("ead").kind


def test_transfer_rejects_bad_arguments():
    model, x = _mlp(0), _data(3)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match="target"):
        transfer(model, "model", "fgm", x, y, hyperparameters={"eps": 0.1})
    with pytest.raises(TypeError, match="sources"):
        transfer("model", model, "fgm", x, y, hyperparameters={"eps": 0.1})
    with pytest.raises(ValueError, match="source_names"):
        transfer([model, model], model, "fgm", x, y, source_names=["a"])
