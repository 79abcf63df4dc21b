"""Feature squeezing (Xu et al. 2018) and defensive distillation (Papernot et al. 2016):
squeezers against reference formulas, threshold calibration, the joint detector and its
evaluation mode, the distillation losses against their closed forms, resumable training."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

from advx.attacks import get_attack
from advx.data import load_mnist
from advx.defenses import (
    FeatureSqueezing,
    bit_depth,
    median_smoothing,
    non_local_means,
    threshold_at_fpr,
)
from advx.defenses.distillation import (
    distillation,
    distillation_loss,
    soft_labels,
    student_name,
    temperature_loss,
)
from advx.evaluation import run_attack
from advx.models import load

DATA = os.environ.get("ADVX_DATA", str(Path(__file__).parents[2] / "shared" / "data"))
needs_mnist = pytest.mark.skipif(
    not (Path(DATA) / "MNIST").is_dir(), reason="MNIST not available (set ADVX_DATA)"
)


def _images(n=6, c=1, h=7, w=9, dtype=torch.float64, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _small_cnn(channels=1, classes=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, classes),
    ).double()


# ----------------------------------------------------------------------------- squeezers


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_bit_depth_equals_rint_formula(bits):
    x = _images(c=3)
    levels = 2**bits - 1
    # exact half-way points: rint rounds them to even, as torch.round does
    x[0, 0, 0, : levels + 1] = (torch.arange(levels + 1, dtype=x.dtype)[:9] + 0.5) / levels
    x = x.clamp(0, 1)
    expected = np.rint(x.numpy() * levels) / levels
    out = bit_depth(bits)(x)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out.dtype == x.dtype and out.shape == x.shape


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 1, 7, 9), (3, 3, 6, 5)])
def test_median_smoothing_equals_scipy_reflect(size, shape):
    x = _images(*shape)
    # ties and plateaus matter for even windows (upper middle value)
    x[0, 0, :3, :3] = 0.5
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_array_equal(median_smoothing(size)(x).numpy(), expected)


def test_median_smoothing_grey_batch_and_float32():
    x = _images(n=2, c=1).float()
    out = median_smoothing(2)(x[:, 0])
    expected = scipy.ndimage.median_filter(x[:, 0].numpy(), size=(1, 2, 2), mode="reflect")
    np.testing.assert_array_equal(out.numpy(), expected)
    with pytest.raises(ValueError, match="median_smoothing"):
        median_smoothing(2)(x.reshape(2, -1))


def test_squeezers_reject_bad_settings():
    with pytest.raises(ValueError, match="bits"):
        bit_depth(0)
    with pytest.raises(ValueError, match="bits"):
        bit_depth(9)
    with pytest.raises(ValueError, match="size"):
        median_smoothing(0)
    with pytest.raises(ValueError, match="search_window"):
        non_local_means(12, 3, 2)
    with pytest.raises(ValueError, match="strength"):
        non_local_means(13, 3, 0)


def test_non_local_means_matches_opencv_and_keeps_flat_images():
    cv2 = pytest.importorskip("cv2")
    x = _images(n=2, c=3, h=16, w=16).float()
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected = np.stack(
        [
            cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(p), None, 2, 2, 3, 13)
            for p in pixels
        ]
    )
    out = non_local_means(13, 3, 2)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy() * 255, expected, atol=1e-4)
    flat = torch.full((1, 1, 12, 12), 100 / 255)
    torch.testing.assert_close(non_local_means(7, 3, 10)(flat), flat)


# ------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.2])
@pytest.mark.parametrize("n", [100, 1000, 999])
def test_threshold_calibration_hits_the_requested_fpr(fpr, n):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n)) ** 3
    threshold = threshold_at_fpr(scores, fpr)
    rate = float((scores > threshold).double().mean())
    assert rate <= fpr + 1e-12
    assert rate > fpr - 1.0 / n - 1e-12  # the largest rate that does not exceed fpr
    held_out = torch.rand(200_000, generator=torch.Generator().manual_seed(1)) ** 3
    assert abs(float((held_out > threshold).double().mean()) - fpr) < 3 / np.sqrt(n) + 1 / n


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="fpr"):
        threshold_at_fpr(torch.rand(10), 1.0)
    with pytest.raises(ValueError, match="scores"):
        threshold_at_fpr(torch.rand(2, 5), 0.05)


def test_score_is_the_largest_l1_distance_between_softmaxes():
    model = _small_cnn()
    squeezers = [bit_depth(1), median_smoothing(2)]
    detector = FeatureSqueezing(model, squeezers)
    x = _images(n=5, h=8, w=8)
    softmax = torch.softmax
    with torch.no_grad():
        base = softmax(model(x), 1)
        d1 = (softmax(model(torch.round(x)), 1) - base).abs().sum(1)
        smoothed = torch.from_numpy(
            scipy.ndimage.median_filter(x.numpy(), size=(1, 1, 2, 2), mode="reflect")
        )
        d2 = (softmax(model(smoothed), 1) - base).abs().sum(1)
    torch.testing.assert_close(detector.score(x), torch.maximum(d1, d2))
    torch.testing.assert_close(detector.score(x, batch_size=2), detector.score(x))
    with pytest.raises(RuntimeError, match="fit"):
        detector.detect(x)
    detector.fit(x, fpr=0.2)
    assert int(detector.detect(x).sum()) <= 1
    assert torch.equal(detector(x), model(x))


def test_detector_keeps_model_mode_and_inputs():
    model = _small_cnn().train()
    x = _images(n=4, h=8, w=8)
    before = x.clone()
    FeatureSqueezing(model, [bit_depth(1)]).fit(x)
    assert model.training and torch.equal(x, before)
    assert all(p.requires_grad for p in model.parameters())


def test_success_against_the_detector_never_exceeds_plain_success():
    model = _small_cnn()
    x = _images(n=24, h=8, w=8, seed=3)
    labels = model(x).argmax(1).detach()
    detector = FeatureSqueezing(model, [bit_depth(2), median_smoothing(2)]).fit(x, fpr=0.05)
    settings = {"eps": 0.1, "steps": 10, "step_size": 0.02}
    plain = run_attack(model, x, labels, "ifgm", norm="inf", hyperparameters=settings, progress=0)
    judged = run_attack(
        model,
        x,
        labels,
        "ifgm",
        norm="inf",
        hyperparameters=settings,
        progress=False,
        detector=detector,
    )
    assert plain.samples["success"].sum() > 0
    assert np.all(judged.samples["success"] <= plain.samples["success"])
    detected = detector.detect(judged.adversarials).numpy()
    np.testing.assert_array_equal(judged.samples["success"], plain.samples["success"] & ~detected)
    assert judged.config["detector"] == detector.describe()
    verdict = detector.evaluate(judged.adversarials, labels)
    np.testing.assert_array_equal(verdict["success"].numpy(), judged.samples["success"] == 1)


def test_feature_squeezing_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        FeatureSqueezing(lambda x: x, [bit_depth(1)])
    with pytest.raises(ValueError, match="squeezers"):
        FeatureSqueezing(_small_cnn(), [])


# ---------------------------------------------------------------------------- distillation


def test_temperature_loss_equals_its_closed_form():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    temperature = 10.0
    expected = 0.0
    for row, label in zip(z.numpy(), y.numpy()):
        scaled = row / temperature
        expected -= scaled[label] - np.log(np.exp(scaled).sum())
    expected /= 2
    assert np.isclose(float(temperature_loss(z, y, temperature=temperature)), expected)


def test_distillation_loss_and_gradient_equal_their_closed_forms():
    """L = -(1/N) sum_i sum_k p_ik log softmax(z_i / T)_k on a tiny linear model z = W x;
    dL/dz = (softmax(z / T) - p) / (N T)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x = torch.rand(5, 4, dtype=torch.float64)
    teacher = nn.Linear(4, 3).double()
    temperature = 20.0
    p = soft_labels(teacher, x, temperature=temperature)
    z = model(x)
    loss = distillation_loss(z, p, temperature=temperature)
    zs = z.detach().numpy() / temperature
    log_q = zs - np.log(np.exp(zs).sum(1, keepdims=True))
    assert np.isclose(float(loss.detach()), -(p.numpy() * log_q).sum(1).mean())
    teacher_z = teacher(x).detach().numpy() / temperature
    np.testing.assert_allclose(
        p.numpy(), np.exp(teacher_z) / np.exp(teacher_z).sum(1, keepdims=True), rtol=1e-12
    )
    (grad_z,) = torch.autograd.grad(loss, z)
    expected = (np.exp(log_q) - p.numpy()) / (5 * temperature)
    np.testing.assert_allclose(grad_z.numpy(), expected, rtol=1e-10, atol=1e-15)
    hard = torch.tensor([0, 1, 2, 0, 1])
    one_hot = torch.nn.functional.one_hot(hard, 3).double()
    torch.testing.assert_close(
        distillation_loss(z, one_hot, temperature=temperature),
        distillation_loss(z, hard, temperature=temperature),
    )


def test_distillation_rejects_bad_temperature():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(TypeError, match="temperature"):
        temperature_loss(z, torch.zeros(2, dtype=torch.long), temperature="10")
    with pytest.raises(ValueError, match="soft"):
        distillation_loss(z, torch.zeros(2, 4), temperature=2.0)
    assert student_name("mnist-cnn", 100) == "mnist-cnn-distilled-t100"


@needs_mnist
def test_distillation_trains_a_resumable_student(tmp_path):
    """A reduced run (2048 images, 2 epochs, T = 2: at high T such a short run leaves the
    teacher's soft labels nearly uniform); the student learns the teacher's decisions, is cached
    under its name and a second call resumes instead of retraining."""
    torch.set_num_threads(1)
    common = dict(epochs=2, seed=0, data_dir=DATA, cache_dir=tmp_path, max_samples=2048)
    student, metrics = distillation("mnist-fcnn", 2, progress=False, **common)
    teacher = load("mnist-fcnn-distill-teacher-t2", cache_dir=tmp_path, train_if_missing=False)
    loaded = load("mnist-fcnn-distilled-t2", cache_dir=tmp_path, train_if_missing=False)
    x, y = load_mnist("test", DATA)
    x, y = x[:500], y[:500]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x))
        predicted = student(x).argmax(1)
        accuracy = float((predicted == y).double().mean())
        agreement = float((predicted == teacher(x).argmax(1)).double().mean())
    assert accuracy > 0.5 and metrics["teacher_test_accuracy"] > 0.5
    assert agreement > 0.7
    assert metrics["temperature"] == 2.0
    again, metrics_again = distillation("mnist-fcnn", 2, progress=False, **common)
    assert metrics_again["train_time_s"] == metrics["train_time_s"]  # resumed, not retrained
    with torch.no_grad():
        torch.testing.assert_close(again(x), student(x))


def test_get_attack_still_resolves_after_imports():
    assert get_attack("ead").name == "ead"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "mnist-cnn", "--distill", "0"], "--distill"),
        (["train", "mnist-cnn", "--distill", "10", "--adversarial", "ddn"], "--distill"),
    ],
)
def test_cli_distill_rejects_bad_settings(argv, named, capsys):
    from advx.cli import main

    assert main(argv) == 2
    assert named in capsys.readouterr().err


@needs_mnist
def test_madry_recipe_trains_on_pgd_linf_examples_and_resumes(tmp_path):
    from advx.defenses.madry import madry_name, madry_training
    from advx.models.checkpoints import read_checkpoint

    torch.set_num_threads(1)
    common = dict(architecture="mnist-fcnn", data_dir=DATA, cache_dir=tmp_path)
    common |= dict(max_samples=256, epochs=1, steps=3, progress=False)
    model, metrics = madry_training(0.3, **common)
    checkpoint = read_checkpoint(tmp_path / "mnist-madry.ckpt")
    extra = checkpoint["recipe"]["extra"]
    assert extra["attack"] == "pgd" and extra["max_norm"] == 0.3 and extra["beta"] == 0.0
    assert extra["attack_kwargs"] == {
        "norm": float("inf"),
        "steps": 3,
        "step_size": 0.01,
        "random_start": True,
    }
    assert load("mnist-madry", cache_dir=tmp_path, train_if_missing=False) is not None
    _, again = madry_training(0.3, **common)
    assert again["train_time_s"] == metrics["train_time_s"]
    assert madry_name(0.1) == "mnist-madry-eps0.1"
    with pytest.raises(ValueError, match="eps"):
        madry_name(0.0)


def test_fgsm_rs_recipe_is_one_step_of_one_and_a_quarter_eps_from_a_random_start():
    from advx.defenses.madry import madry_attack_settings

    settings = madry_attack_settings(0.3, "fgsm-rs", steps=40, step_size=0.01)
    assert settings == {
        "norm": float("inf"),
        "steps": 1,
        "step_size": pytest.approx(0.375),
        "random_start": True,
    }
    assert madry_attack_settings(0.3, "pgd", 40, 0.01)["steps"] == 40
    with pytest.raises(ValueError, match="method"):
        madry_attack_settings(0.3, "fgsm", 40, 0.01)


def test_fgsm_rs_training_examples_stay_in_the_eps_ball_and_the_box():
    from advx.attacks import pgd
    from advx.defenses.madry import madry_attack_settings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(32, 16)
    y = torch.randint(0, 3, (32,))
    adv = pgd(model, x, y, eps=0.3, **madry_attack_settings(0.3, "fgsm-rs", 40, 0.01))
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert not torch.equal(adv, x)


def test_n_fgsm_examples_are_noise_plus_one_signed_step_without_projection():
    """N-FGSM (de Jorge et al. 2022): x + eta + eps sign(grad) with eta ~ U[-2 eps, 2 eps],
    clipped to [0, 1] only, so perturbations beyond eps (up to 3 eps) occur; train mode is
    restored; the recipe's settings are noise 2 eps and step eps."""
    from advx.defenses.madry import madry_attack_settings, noise_fgsm_batch

    settings = madry_attack_settings(0.3, "n-fgsm", 40, 0.01)
    assert settings == {"noise": pytest.approx(0.6), "step_size": pytest.approx(0.3)}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Dropout(0.5)).train()
    x = torch.rand(256, 16) * 0.2 + 0.4  # away from the box, so clipping rarely hides the step
    y = torch.randint(0, 3, (256,))
    adv, labels = noise_fgsm_batch(model, x, y, **settings)
    assert model.training and torch.equal(labels, y)
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).abs()
    assert delta.max() <= 0.9 + 1e-6
    assert (delta.amax(1) > 0.3 + 1e-3).all()  # not projected onto the eps-ball


@needs_mnist
def test_madry_early_stopping_scores_every_epoch_by_pgd_on_training_images(tmp_path):
    from advx.defenses.madry import madry_training
    from advx.models.checkpoints import read_checkpoint

    torch.set_num_threads(1)
    common = dict(architecture="mnist-fcnn", data_dir=DATA, cache_dir=tmp_path)
    common |= dict(max_samples=256, epochs=2, progress=False, method="n-fgsm")
    _, metrics = madry_training(0.1, early_stopping=32, **common)
    scores = [h["selection_score"] for h in metrics["history"]]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert metrics["selection_score"] == max(scores)
    assert metrics["selected_epoch"] == 1 + scores.index(max(scores))
    extra = read_checkpoint(tmp_path / "mnist-madry-eps0.1.ckpt")["recipe"]["extra"]
    assert extra["method"] == "n-fgsm" and extra["early_stopping"] == 32
    with pytest.raises(ValueError, match="early_stopping"):
        madry_training(0.1, early_stopping=-1, **common)


@pytest.mark.parametrize(
    "name, eps",
    [
        ("mnist-madry", 0.3),
        ("mnist-madry-eps0.1", 0.1),
        ("mnist-madry-eps0.4", 0.4),
        ("mnist-madry-eps0", None),
        ("mnist-madry-eps1.5", None),
        ("mnist-madry-epsx", None),
        ("mnist-cnn", None),
    ],
)
def test_madry_eps_reads_the_cache_name(name, eps):
    from advx.defenses.madry import madry_eps

    assert madry_eps(name) == eps


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "mnist-madry", "--set", "method=fgsm"], "method"),
        (["train", "mnist-madry", "--set", "beta=0.5"], "--set"),
        (["train", "mnist-madry", "--distill", "10"], "--distill"),
        (["train", "mnist-madry-eps9", "--epochs", "1"], "name"),
    ],
)
def test_cli_madry_rejects_bad_settings(argv, named, capsys, tmp_path, monkeypatch):
    from advx.cli import main

    monkeypatch.setenv("ADVX_CACHE", str(tmp_path))
    assert main(argv) == 2
    assert named in capsys.readouterr().err
