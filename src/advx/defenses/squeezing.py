"""Feature squeezing and its joint detector (Xu, Evans & Qi, "Feature squeezing: detecting
adversarial examples in deep neural networks", NDSS 2018; thesis Sec. 4.3.7.3).

A squeezer maps a batch of images in [0, 1] to a batch of the same shape:

- :func:`bit_depth` reduces the colour depth to ``b`` bits (Xu et al., Sec. IV-A);
- :func:`median_smoothing` is a ``size x size`` median filter per channel with reflect padding,
  as the reference implementation's ``scipy.ndimage.median_filter(mode='reflect')`` (Sec. IV-B);
- :func:`non_local_means` is OpenCV's non-local means denoiser (Sec. IV-B; optional extra
  ``squeeze``: ``pip install advx[squeeze]``).

:class:`FeatureSqueezing` scores an input by the largest L1 distance between the model's softmax
on it and on each squeezed version (Sec. V-A, Eq. for the joint detector), calibrates the
threshold on clean images at a false-positive rate, and judges attacks against the detector: an
example succeeds only if it is adversarial *and* not detected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks._core import attack_mode, check_inputs, check_int

__all__ = [
    "FeatureSqueezing",
    "Squeezer",
    "bit_depth",
    "median_smoothing",
    "non_local_means",
    "threshold_at_fpr",
]

Squeezer = Callable[[Tensor], Tensor]


def _named(function: Squeezer, name: str) -> Squeezer:
    function.__name__ = name
    function.__qualname__ = name
    return function


def bit_depth(bits: int) -> Squeezer:
    """Colour-depth reduction to ``bits`` bits (Xu et al. 2018, Sec. IV-A):
    ``x -> rint(x (2^b - 1)) / (2^b - 1)`` (round half to even, as ``numpy.rint``).

    Args:
        bits: 1 to 8 (1: binary images, the MNIST configuration).
    """
    check_int(bits, "bits", 1)
    if bits > 8:
        raise ValueError(f"bits must lie in [1, 8], got {bits}")
    levels = float(2**bits - 1)

    def squeeze(x: Tensor) -> Tensor:
        return torch.round(x * levels) / levels

    return _named(squeeze, f"bit_depth_{bits}")


def _reflect_index(length: int, before: int, after: int, device) -> Tensor:
    """Indices of a 1-D signal padded in scipy's 'reflect' mode (d c b a | a b c d | d c b a)."""
    index = torch.arange(-before, length + after, device=device)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


def median_smoothing(size: int) -> Squeezer:
    """``size x size`` median filter per channel (Xu et al. 2018, Sec. IV-B), equal to
    ``scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode='reflect')``: the window of
    pixel i spans offsets ``-(size // 2) .. size - 1 - size // 2`` and, for even windows (2 x 2),
    the median is the upper middle value (rank ``size**2 // 2`` of the sorted window).

    Args:
        size: window side, >= 1 (2 in the thesis's MNIST and CIFAR-10 detectors).
    """
    check_int(size, "size", 1)
    before, after = size // 2, size - 1 - size // 2
    rank = size * size // 2

    def squeeze(x: Tensor) -> Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"median_smoothing needs images (N, C, H, W) or (N, H, W), got {tuple(x.shape)}"
            )
        images = x if x.dim() == 4 else x.unsqueeze(1)
        n, c, h, w = images.shape
        rows = _reflect_index(h, before, after, x.device)
        cols = _reflect_index(w, before, after, x.device)
        padded = images[:, :, rows][:, :, :, cols]
        windows = F.unfold(padded.reshape(n * c, 1, h + size - 1, w + size - 1), size)
        median = windows.sort(dim=1).values[:, rank]
        return median.reshape(n, c, h, w).reshape(x.shape)

    return _named(squeeze, f"median_{size}x{size}")


def non_local_means(search_window: int, patch_size: int, strength: float) -> Squeezer:
    """Non-local means denoising (Buades et al. 2005; Xu et al. 2018, Sec. IV-B) with OpenCV's
    ``fastNlMeansDenoisingColored`` (``fastNlMeansDenoising`` for grey images) on the image in
    uint8, as the reference implementation; the thesis's CIFAR-10 filter is 13-3-2.

    Needs OpenCV (``pip install advx[squeeze]``); ``ImportError`` says so otherwise.

    Args:
        search_window: side of the search window (odd, >= 1), e.g. 13.
        patch_size: side of the compared patches (odd, >= 1), e.g. 3.
        strength: filter strength ``h`` (Gaussian bandwidth on the 0-255 scale), > 0, e.g. 2.
    """
    check_int(search_window, "search_window", 1)
    check_int(patch_size, "patch_size", 1)
    for value, name in ((search_window, "search_window"), (patch_size, "patch_size")):
        if value % 2 == 0:
            raise ValueError(f"{name} must be odd, got {value}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength > 0:
        raise ValueError(f"strength must be a number > 0, got {strength!r}")
    try:
        import cv2  # noqa: PLC0415 - optional dependency
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "non_local_means needs OpenCV: pip install 'advx[squeeze]' (opencv-python-headless)"
        ) from error

    def denoise(image: np.ndarray) -> np.ndarray:
        if image.shape[2] == 3:
            return cv2.fastNlMeansDenoisingColored(
                image, None, float(strength), float(strength), patch_size, search_window
            )
        single = cv2.fastNlMeansDenoising(
            np.ascontiguousarray(image[:, :, 0]), None, float(strength), patch_size, search_window
        )
        return single[:, :, None]

    def squeeze(x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"non_local_means needs images (N, 1 or 3, H, W), got {tuple(x.shape)}"
            )
        pixels = (x.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8)
        images = pixels.permute(0, 2, 3, 1).numpy()
        out = np.stack([denoise(np.ascontiguousarray(image)) for image in images])
        result = torch.from_numpy(out).permute(0, 3, 1, 2).to(x.dtype) / 255
        return result.to(x.device)

    return _named(squeeze, f"non_local_means_{search_window}_{patch_size}_{strength:g}")


def threshold_at_fpr(scores: Tensor, fpr: float) -> float:
    """The detection threshold that at most a fraction ``fpr`` of clean ``scores`` exceed
    (Xu et al. 2018, Sec. V-A): the ``1 - fpr`` quantile, taken as the
    ``ceil((1 - fpr) n)``-th smallest score so that ``mean(scores > threshold) <= fpr``.

    Args:
        scores: (n,) detector scores of legitimate inputs.
        fpr: the false-positive rate asked for, in [0, 1).
    """
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.numel() == 0:
        raise ValueError("scores must be a non-empty 1-D tensor")
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr < 1:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr!r}")
    ordered = scores.detach().double().sort().values
    n = ordered.numel()
    rank = min(n, int(np.ceil((1 - fpr) * n - 1e-9)))
    return float(ordered[max(rank, 1) - 1])


class FeatureSqueezing(nn.Module):
    """The joint feature-squeezing detector of Xu et al. (NDSS 2018, Sec. V-A).

    ``score(x) = max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` over the squeezers ``s``; an
    input is flagged adversarial when its score exceeds the threshold set by :meth:`fit`.
    Called as a module it returns the model's logits on ``x`` (the prediction is the model's).

    Args:
        model: the classifier (returns logits).
        squeezers: non-empty sequence of callables from a batch to a batch of the same shape
            (e.g. ``[bit_depth(1), median_smoothing(2)]``, the thesis's MNIST detector).
        threshold: an already known threshold (else call :meth:`fit`).
    """

    def __init__(
        self, model: nn.Module, squeezers: Sequence[Squeezer], threshold: float | None = None
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        squeezers = list(squeezers) if not callable(squeezers) else [squeezers]
        if not squeezers or not all(callable(s) for s in squeezers):
            raise ValueError("squeezers must be a non-empty sequence of callables")
        self.model = model
        self.squeezers = squeezers
        self.threshold = None if threshold is None else float(threshold)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - the model's logits
        return self.model(x)

    def describe(self) -> dict:
        """Squeezer names and threshold (stored with evaluation runs)."""
        names = [getattr(s, "__name__", type(s).__name__) for s in self.squeezers]
        return {"squeezers": names, "threshold": self.threshold}

    @torch.no_grad()
    def score(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """One score per sample: the largest L1 distance between the softmax on ``x`` and on
        each squeezed ``x`` (model in eval mode, restored afterwards)."""
        check_inputs(x, "x")
        check_int(batch_size, "batch_size", 1)
        scores = []
        with attack_mode(self.model):
            for chunk in x.split(batch_size):
                base = F.softmax(self.model(chunk), dim=1)
                distances = [
                    (F.softmax(self.model(squeeze(chunk)), dim=1) - base).abs().sum(1)
                    for squeeze in self.squeezers
                ]
                scores.append(torch.stack(distances).amax(0))
        return torch.cat(scores)

    def fit(self, clean_images: Tensor, fpr: float = 0.05) -> FeatureSqueezing:
        """Set the threshold so that at most ``fpr`` of ``clean_images`` are flagged
        (:func:`threshold_at_fpr` of their scores); returns ``self``."""
        self.threshold = threshold_at_fpr(self.score(clean_images), fpr)
        return self

    def detect(self, x: Tensor) -> Tensor:
        """Boolean tensor, one per sample: score above the threshold (``RuntimeError`` before
        :meth:`fit` unless a threshold was given)."""
        if self.threshold is None:
            raise RuntimeError("FeatureSqueezing: call fit(clean_images) or pass threshold=")
        return self.score(x) > self.threshold

    @torch.no_grad()
    def evaluate(
        self, adversarials: Tensor, labels: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Judge examples against the detector (thesis Sec. 4.3.7.3): ``adversarial`` (a fresh
        forward pass: misclassified, or classified as ``targets`` when given), ``detected`` and
        ``success`` = adversarial and not detected. Each a boolean tensor, one per sample."""
        check_inputs(adversarials, "adversarials")
        with attack_mode(self.model):
            predicted = self.model(adversarials).argmax(1).cpu()
        labels = labels.cpu()
        adversarial = predicted == targets.cpu() if targets is not None else predicted != labels
        detected = self.detect(adversarials).cpu()
        return {
            "adversarial": adversarial,
            "detected": detected,
            "success": adversarial & ~detected,
        }
