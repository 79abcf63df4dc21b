"""Linear regions of piecewise-linear networks (Croce & Hein, "A randomized gradient-free attack
on ReLU networks", GCPR 2018, Sec. 2).

A network built from Linear, Conv2d, ReLU, Flatten, AvgPool2d, MaxPool2d, eval-mode BatchNorm and
Dropout (the identity in eval mode) is affine on each polytope Q(x) of a partition of its input
space. At a point x this module computes, exactly from the weights and batched over points:

- the activation pattern (which ReLUs are on, which element each max-pool window selects),
- the affine map of the logits on Q(x), ``f(z) = V z + a`` (V^{(L+1)}, a^{(L+1)} of Sec. 2),
- the halfspaces ``A z + b >= 0`` describing Q(x): one per hidden ReLU unit,
  Delta^{(l)}(x) (V^{(l)} z + a^{(l)}) >= 0 (the polytope equation of Sec. 2), plus, for max
  pooling, "the selected element stays the largest of its window".

The maps are propagated forward as (value, Jacobian) pairs: every supported layer is affine once
the pattern is fixed, so the Jacobian of the logits at x is V, and a = f(x) - V x. The result is
checked against the network's own forward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED_LAYERS = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Identity,
)

CHECK_TOLERANCE = 1e-4
"""Largest relative deviation between V x + a and the model's logits before the model is refused
(its forward pass is then not the composition of its layers in registration order)."""


@dataclass
class Region:
    """Affine description of the linear regions at a batch of points (N of them, d inputs).

    Attributes:
        logits_map: V, (N, K, d): the logits are ``V z + a`` for z in the region.
        logits_offset: a, (N, K).
        halfspace_matrix: A, (N, H, d); the region is ``{z : A z + b >= 0}``.
        halfspace_offset: b, (N, H).
        patterns: (N, P) bool: the on/off state of every ReLU unit, then the one-hot selection of
            every max-pool window element (P = units + pooled elements).
    """

    logits_map: Tensor
    logits_offset: Tensor
    halfspace_matrix: Tensor
    halfspace_offset: Tensor
    patterns: Tensor

    def logits(self, z: Tensor) -> Tensor:
        """The region's affine logits at points z (N, d): V z + a."""
        return torch.einsum("nkd,nd->nk", self.logits_map, z) + self.logits_offset

    def slack(self, z: Tensor) -> Tensor:
        """A z + b (N, H): non-negative exactly where z lies in the region."""
        return torch.einsum("nhd,nd->nh", self.halfspace_matrix, z) + self.halfspace_offset


def piecewise_linear_layers(model: nn.Module) -> list[nn.Module]:
    """The leaf layers of ``model`` in registration order; a TypeError names any layer that is not
    piecewise linear (or not supported), and a ValueError any unsupported configuration.

    Args:
        model: a network whose forward pass applies its leaf modules in registration order.
    """
    layers = []
    for name, module in model.named_modules():
        if len(list(module.children())) > 0:
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            kind = type(module).__name__
            raise TypeError(
                f"layer {name or '<model>'} ({kind}) is not supported by the linear-region "
                "geometry: use Linear, Conv2d, ReLU, Flatten, AvgPool2d, MaxPool2d, BatchNorm "
                "(eval mode) or Dropout"
            )
        _check_configuration(name, module)
        layers.append(module)
    if not layers:
        raise TypeError(f"model {type(model).__name__} has no layers to analyse")
    return layers


def _check_configuration(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise ValueError(f"layer {name}: Conv2d padding_mode {module.padding_mode!r} unsupported")
    if isinstance(module, nn.MaxPool2d) and (module.ceil_mode or module.return_indices):
        raise ValueError(f"layer {name}: MaxPool2d with ceil_mode/return_indices unsupported")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_mean is None:
        raise ValueError(f"layer {name}: BatchNorm without running statistics unsupported")


def float64_layers(model: nn.Module) -> list[nn.Module]:
    """Eval-mode float64 copies of the model's piecewise-linear layers (the model is untouched)."""
    layers = piecewise_linear_layers(model)
    return [copy.deepcopy(layer).double().eval() for layer in layers]


# --------------------------------------------------------------------------- forward pass


def _batchnorm_scale(layer: nn.Module) -> tuple[Tensor, Tensor]:
    scale = torch.rsqrt(layer.running_var + layer.eps)
    shift = -layer.running_mean * scale
    if layer.weight is not None:
        scale, shift = scale * layer.weight, shift * layer.weight + layer.bias
    return scale, shift


def _channel_view(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(1, -1, *([1] * (like.dim() - 2)))


def _linear_part(layer: nn.Module, jac: Tensor) -> Tensor:
    """The layer's linear part (no bias) applied to Jacobian columns (M, *shape)."""
    if isinstance(layer, nn.Linear):
        return jac @ layer.weight.T
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            jac, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, _ = _batchnorm_scale(layer)
        return jac * _channel_view(scale, jac)
    if isinstance(layer, nn.AvgPool2d):
        return layer(jac)
    if isinstance(layer, nn.Flatten):
        return layer(jac)
    raise TypeError(f"{type(layer).__name__} has no linear part")  # pragma: no cover


def _maxpool_windows(layer: nn.MaxPool2d, value: Tensor) -> tuple[Tensor, Tensor]:
    """Unfolded windows (N, C, k*k, L) of ``value`` (padding reads -inf) and their validity."""
    k = _pair(layer.kernel_size)
    n, c = value.shape[:2]
    padded = F.pad(value, _pad4(layer.padding), value=-float("inf"))
    cols = F.unfold(padded, k, dilation=layer.dilation, stride=layer.stride or k)
    cols = cols.reshape(n, c, k[0] * k[1], -1)
    return cols, torch.isfinite(cols)


def _unfold_like(layer: nn.MaxPool2d, jac: Tensor) -> Tensor:
    k = _pair(layer.kernel_size)
    m, c = jac.shape[:2]
    padded = F.pad(jac, _pad4(layer.padding), value=0.0)
    cols = F.unfold(padded, k, dilation=layer.dilation, stride=layer.stride or k)
    return cols.reshape(m, c, k[0] * k[1], -1)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _pad4(padding) -> tuple[int, int, int, int]:
    ph, pw = _pair(padding)
    return (pw, pw, ph, ph)


class _Propagation:
    """Forward propagation of (value, Jacobian) through the layers at points x (N, d).

    Until the first ReLU or max pool the map is affine and the same for every point, so its
    Jacobian is propagated once, on d columns (``shared``), and copied per point only there."""

    def __init__(self, inputs: Tensor, flat_inputs: Tensor, with_jacobian: bool) -> None:
        n, d = flat_inputs.shape
        self.n, self.d = n, d
        self.value = inputs
        self.jac = None
        self.shared = with_jacobian
        if with_jacobian:  # (d, *shape) while shared, then (N*d, *shape): column j of sample i
            # is row i*d + j
            eye = torch.eye(d, dtype=inputs.dtype, device=inputs.device)
            self.jac = eye.reshape(d, *inputs.shape[1:])
        self.patterns: list[Tensor] = []
        self.matrices: list[Tensor] = []
        self.offsets: list[Tensor] = []
        self.flat_inputs = flat_inputs

    def per_point(self) -> None:
        """Copy the shared Jacobian to every point (before the first pattern-dependent layer)."""
        if self.shared:
            self.jac = self.jac.unsqueeze(0).expand(self.n, *self.jac.shape)
            self.jac = self.jac.reshape(self.n * self.d, *self.jac.shape[2:])
            self.shared = False

    def _jac_per_sample(self, jac: Tensor) -> Tensor:
        """(N*d, units...) -> (N, units, d)."""
        return jac.reshape(self.n, self.d, -1).transpose(1, 2)

    def _offset(self, value: Tensor, jac3: Tensor) -> Tensor:
        """a = value - J x for the flattened units (N, units)."""
        return value.reshape(self.n, -1) - torch.einsum("nud,nd->nu", jac3, self.flat_inputs)

    def step(self, layer: nn.Module) -> None:
        if isinstance(layer, (nn.Dropout, nn.Identity)):
            return
        if isinstance(layer, (nn.ReLU, nn.MaxPool2d)) and self.jac is not None:
            self.per_point()
        if isinstance(layer, nn.ReLU):
            self._relu()
        elif isinstance(layer, nn.MaxPool2d):
            self._maxpool(layer)
        else:
            self.value = layer(self.value)
            if self.jac is not None:
                self.jac = _linear_part(layer, self.jac)

    def _relu(self) -> None:
        on = self.value > 0
        self.patterns.append(on.reshape(self.n, -1))
        if self.jac is not None:
            jac3 = self._jac_per_sample(self.jac)
            sign = on.reshape(self.n, -1, 1).to(jac3.dtype) * 2 - 1
            self.matrices.append(sign * jac3)
            self.offsets.append(sign[..., 0] * self._offset(self.value, jac3))
            mask = on.unsqueeze(1).expand(self.n, self.d, *on.shape[1:])
            self.jac = self.jac * mask.reshape(self.jac.shape).to(self.jac.dtype)
        self.value = torch.relu(self.value)

    def _maxpool(self, layer: nn.MaxPool2d) -> None:
        cols, valid = _maxpool_windows(layer, self.value)  # (N, C, kk, L)
        chosen = cols.argmax(2, keepdim=True)  # (N, C, 1, L)
        n, c, kk, length = cols.shape
        onehot = torch.zeros_like(valid).scatter_(2, chosen, True)
        self.patterns.append(onehot.reshape(n, -1))
        out_shape = layer(self.value).shape
        if self.jac is not None:
            jcols = _unfold_like(layer, self.jac)  # (N*d, C, kk, L)
            idx = chosen.repeat_interleave(self.d, 0)
            picked = jcols.gather(2, idx)  # (N*d, C, 1, L)
            diff_j = picked - jcols  # selected minus each window element
            diff_v = cols.gather(2, chosen) - cols
            keep = (valid & ~onehot).reshape(n, -1)  # drop padding and the selected element
            jac3 = diff_j.reshape(n, self.d, -1).transpose(1, 2)
            offs = diff_v.reshape(n, -1) - torch.einsum("nud,nd->nu", jac3, self.flat_inputs)
            jac3 = jac3 * keep.unsqueeze(2).to(jac3.dtype)
            offs = torch.where(keep, offs, torch.ones_like(offs))  # dropped rows: 0 z + 1 >= 0
            self.matrices.append(jac3)
            self.offsets.append(offs)
            self.jac = picked.reshape(n * self.d, *out_shape[1:])
        self.value = cols.gather(2, chosen).reshape(out_shape)


def _run(layers: list[nn.Module], inputs: Tensor, with_jacobian: bool) -> _Propagation:
    flat_inputs = inputs.reshape(inputs.shape[0], -1)
    prop = _Propagation(inputs, flat_inputs, with_jacobian)
    with torch.no_grad():
        for layer in layers:
            prop.step(layer)
    return prop


def activation_patterns(layers: list[nn.Module], inputs: Tensor) -> Tensor:
    """(N, P) bool activation patterns of the points ``inputs`` (N, ...): ReLU states, then the
    max-pool selections; two points with equal patterns lie in the same linear region.

    Args:
        layers: from :func:`float64_layers` (or :func:`piecewise_linear_layers`).
        inputs: points in the shape the model takes, in the layers' dtype.
    """
    prop = _run(layers, inputs, with_jacobian=False)
    if not prop.patterns:
        return torch.zeros(inputs.shape[0], 0, dtype=torch.bool, device=inputs.device)
    return torch.cat(prop.patterns, dim=1)


def linear_regions(layers: list[nn.Module], inputs: Tensor, logits: Tensor | None = None) -> Region:
    """The linear regions Q(x) of the points ``inputs`` (Croce & Hein 2018, Sec. 2): the affine
    logits map V z + a and the halfspaces Delta^{(l)}(V^{(l)} z + a^{(l)}) >= 0 of every hidden
    layer (plus max-pool selections), exactly from the weights, batched over the points.

    Args:
        layers: from :func:`float64_layers` (or :func:`piecewise_linear_layers`).
        inputs: (N, ...) points in the shape the model takes, in the layers' dtype.
        logits: the model's own logits at ``inputs`` (N, K); when given, V x + a must reproduce
            them (relative deviation at most ``CHECK_TOLERANCE``), else ValueError.
    """
    prop = _run(layers, inputs, with_jacobian=True)
    prop.per_point()  # a network without ReLU or max pool: one affine map
    if prop.value.dim() != 2:
        raise ValueError(f"the layers must end in logits (N, K); got {tuple(prop.value.shape)}")
    jac3 = prop._jac_per_sample(prop.jac)
    offset = prop._offset(prop.value, jac3)
    d = prop.d
    empty = inputs.new_zeros(inputs.shape[0], 0, d)
    region = Region(
        logits_map=jac3,
        logits_offset=offset,
        halfspace_matrix=_concatenated(prop.matrices, empty),
        halfspace_offset=_concatenated(prop.offsets, empty[..., 0]),
        patterns=torch.cat(prop.patterns, 1)
        if prop.patterns
        else torch.zeros(inputs.shape[0], 0, dtype=torch.bool),
    )
    if logits is not None:
        check_region(region, prop.flat_inputs, logits)
    return region


class ImplicitRegions:
    """The linear regions Q(y) of a batch of points y given by their activation patterns alone,
    for networks without max pooling: with the pattern fixed the network is affine, so a
    halfspace row (a hidden unit's pre-activation, signed by its state; the polytope equation of
    Croce & Hein 2018, Sec. 2) is produced only when asked for, by reverse-mode autograd through
    the fixed-pattern network, and the values of all of them at a point by one forward pass.
    ``linear_regions`` builds every row at once (units x d per layer); a deep network's region
    problem needs few of them (constraint generation, ``solvers.solve_l2_generated``).

    Attributes:
        logits_map, logits_offset: V (N, K, d) and a (N, K) of every region, as in ``Region``.
        values_at_points: (N, H) the halfspace values at the points themselves (all >= 0).
    """

    def __init__(self, layers: list[nn.Module], points: Tensor) -> None:
        if any(isinstance(layer, nn.MaxPool2d) for layer in layers):
            raise TypeError("ImplicitRegions: MaxPool2d layers need linear_regions")
        self.layers = layers
        self.shape = points.shape[1:]
        self.flat_points = points.reshape(points.shape[0], -1)
        self.masks = _run(layers, points, with_jacobian=False).patterns
        with torch.no_grad():
            values, logits = zip(*(self._forward(k, points[k : k + 1]) for k in range(len(points))))
        self.values_at_points = torch.cat(values)
        self.logits_map = torch.stack(
            [self._rows(k, lambda v, logits: logits[0]) for k in range(len(points))]
        )
        self.logits_offset = torch.cat(logits) - torch.einsum(
            "nkd,nd->nk", self.logits_map, self.flat_points
        )

    def _forward(self, k: int, z: Tensor) -> tuple[Tensor, Tensor]:
        """Halfspace values (M, H) and logits (M, K) at z (M, ...) under region k's pattern."""
        value, relu, values = z, 0, []
        for layer in self.layers:
            if isinstance(layer, (nn.Dropout, nn.Identity)):
                continue
            if isinstance(layer, nn.ReLU):
                mask = self.masks[relu][k].reshape(value.shape[1:]).to(value.dtype)
                values.append(((2 * mask - 1) * value).reshape(value.shape[0], -1))
                value = value * mask
                relu += 1
            else:
                value = layer(value)
        empty = value.new_zeros(value.shape[0], 0)
        return (torch.cat(values, 1) if values else empty), value

    def _rows(self, k: int, pick) -> Tensor:
        """The rows (M, d) of the affine outputs ``pick(values, logits)`` (M,) of region k."""
        z = self.flat_points[k].reshape(1, *self.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            out = pick(*self._forward(k, z))
            if out.numel() == 0:
                return z.new_zeros(0, z.numel())
            eye = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
            (grads,) = torch.autograd.grad(out, z, eye, is_grads_batched=True)
        return grads.reshape(out.numel(), -1).detach()

    def halfspaces(self, k: int, which: Tensor) -> tuple[Tensor, Tensor]:
        """Rows (M, d) and offsets (M,) of region k's halfspaces ``which`` (indices)."""
        rows = self._rows(k, lambda values, logits: values[0, which])
        offsets = self.values_at_points[k, which] - rows @ self.flat_points[k]
        return rows, offsets

    def values(self, k: int, z: Tensor) -> Tensor:
        """Region k's halfspace values (H,) at the flat point z (d,): A z + b."""
        with torch.no_grad():
            return self._forward(k, z.reshape(1, *self.shape))[0][0]


def _concatenated(parts: list[Tensor], empty: Tensor) -> Tensor:
    """The layers' halfspaces side by side (no copy for a single layer)."""
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def check_region(region: Region, flat_inputs: Tensor, logits: Tensor) -> None:
    """ValueError unless the region's affine logits at its own points equal the model's."""
    mine = region.logits(flat_inputs.to(region.logits_map.dtype))
    theirs = logits.to(mine.dtype)
    scale = theirs.abs().amax().clamp_min(1.0)
    deviation = (mine - theirs).abs().amax() / scale
    if deviation > CHECK_TOLERANCE:
        raise ValueError(
            "the model's logits differ from the composition of its layers in registration order "
            f"(relative deviation {deviation:.2e}); the linear-region geometry needs a model "
            "whose forward pass applies its leaf modules in that order"
        )


__all__ = [
    "CHECK_TOLERANCE",
    "ImplicitRegions",
    "Region",
    "SUPPORTED_LAYERS",
    "activation_patterns",
    "check_region",
    "float64_layers",
    "linear_regions",
    "piecewise_linear_layers",
]
