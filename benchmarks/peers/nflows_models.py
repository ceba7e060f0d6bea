"""nflows (Durkan et al. 2019, bayesiains/nflows) versions of the benchmark architectures."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.peers import ARCHS, Adapter, glow_net, mlp


class _IgnoreContext(nn.Module):
    """nflows calls ``net(x, context)``; the reference networks take only ``x``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``net(x)``."""
        return self.net(x)


class _NetFactory:
    """``transform_net_create_fn(n_in, n_out)`` for nflows' couplings (picklable)."""

    def __init__(self, hidden: int, conv: bool) -> None:
        self.hidden = hidden
        self.conv = conv

    def __call__(self, n_in: int, n_out: int) -> nn.Module:
        make = glow_net if self.conv else mlp
        return _IgnoreContext(make(n_in, n_out, self.hidden))


def _half_mask(features: int, first_conditions: bool) -> Tensor:
    """nflows' mask: ``> 0`` marks the transformed features."""
    mask = torch.zeros(features)
    half = (features + 1) // 2
    if first_conditions:
        mask[half:] = 1
    else:
        mask[:half] = 1
    return mask


def _realnvp(features: int, layers: int, hidden: int) -> nn.Module:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform

    steps = [
        AffineCouplingTransform(_half_mask(features, k % 2 == 0), _NetFactory(hidden, False))
        for k in range(layers)
    ]
    return Flow(CompositeTransform(steps), StandardNormal([features]))


def _glow(shape: tuple[int, ...], levels: int, steps: int, hidden: int) -> nn.Module:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform, MultiscaleCompositeTransform
    from nflows.transforms.conv import OneByOneConvolution
    from nflows.transforms.coupling import AffineCouplingTransform
    from nflows.transforms.normalization import ActNorm
    from nflows.transforms.reshape import SqueezeTransform

    multiscale = MultiscaleCompositeTransform(num_transforms=levels, split_dim=1)
    c, h, w = shape
    for _ in range(levels):
        squeeze = SqueezeTransform()
        c, h, w = squeeze.get_output_shape(c, h, w)
        level: list[nn.Module] = [squeeze]
        for _ in range(steps):
            level += [
                ActNorm(c),
                OneByOneConvolution(c),
                AffineCouplingTransform(_half_mask(c, True), _NetFactory(hidden, True)),
            ]
        out = multiscale.add_transform(CompositeTransform(level), (c, h, w))
        if out is not None:
            c, h, w = out
    return Flow(multiscale, StandardNormal([int(torch.Size(shape).numel())]))


def build(arch: str, *, seed: int = 0) -> Adapter:
    """nflows' ``AffineCouplingTransform`` stacks; Glow from ``ActNorm``, ``OneByOneConvolution``
    (LU) and ``MultiscaleCompositeTransform``."""
    spec = ARCHS[arch]
    if arch == "glow28":
        flow = _glow(spec.shape, spec.levels, spec.layers, spec.hidden)
        note = "no learned split prior (factored-out half under N(0, I)); scale sigmoid(r+2)+1e-3"

        def sample(n: int) -> Tensor:
            return flow.sample(n).reshape(n, *spec.shape)
    else:
        flow = _realnvp(spec.shape[0], spec.layers, spec.hidden)
        note = "scale sigmoid(r+2)+1e-3"
        sample = flow.sample
    return Adapter("nflows", arch, flow, flow.log_prob, sample, note)
