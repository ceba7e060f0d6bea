"""zuko (Rozet et al., probabilists/zuko) versions of the benchmark architectures.

zuko's flows are lazy: ``flow()`` builds the transform and distribution on every call, which is
part of its cost. zuko acts on vectors only, so it has no Glow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.peers import ARCHS, Adapter, unsupported


def _realnvp(features: int, layers: int, hidden: int) -> nn.Module:
    import zuko

    first = (features + 1) // 2
    transforms = []
    for k in range(layers):
        mask = torch.arange(features) < first  # True: the conditioning side
        coupling = zuko.flows.GeneralCouplingTransform(
            features, mask=mask if k % 2 == 0 else ~mask, hidden_features=(hidden, hidden)
        )
        last = coupling.hyper[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        transforms.append(coupling)
    base = zuko.flows.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
    )
    return zuko.flows.Flow(transforms, base)


def build(arch: str, *, seed: int = 0) -> Adapter:
    """``GeneralCouplingTransform`` stacks with zuko's monotonic affine map."""
    spec = ARCHS[arch]
    if arch == "glow28":
        raise unsupported(
            "zuko",
            arch,
            "its flows act on vectors; it has no convolutional "
            "couplings, 1x1 convolutions or multi-scale factor-out",
        )
    flow = _realnvp(spec.shape[0], spec.layers, spec.hidden)

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    def sample(n: int) -> Tensor:
        return flow().rsample((n,))

    return Adapter("zuko", arch, flow, log_prob, sample, "soft-clipped exp scale")
