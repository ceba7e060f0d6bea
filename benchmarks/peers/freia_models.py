"""FrEIA (Ardizzone et al., vislearn/FrEIA) versions of the benchmark architectures."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.peers import ARCHS, Adapter, glow_net, mlp, standard_normal_log_prob


class _Subnet:
    """``subnet_constructor(n_in, n_out)`` building the reference networks (picklable)."""

    def __init__(self, hidden: int, conv: bool) -> None:
        self.hidden = hidden
        self.conv = conv

    def __call__(self, n_in: int, n_out: int) -> nn.Module:
        return (glow_net if self.conv else mlp)(n_in, n_out, self.hidden)


def _realnvp(features: int, layers: int, hidden: int) -> nn.Module:
    import FrEIA.framework as ff
    import FrEIA.modules as fm

    inn = ff.SequenceINN(features)
    for _ in range(layers // 2):  # a GLOW coupling block is two couplings, one per half
        inn.append(fm.GLOWCouplingBlock, subnet_constructor=_Subnet(hidden, False), clamp=2.0)
    return inn


def _glow(shape: tuple[int, ...], levels: int, steps: int, hidden: int) -> nn.Module:
    import FrEIA.framework as ff
    import FrEIA.modules as fm

    nodes: list = [ff.InputNode(*shape, name="input")]
    flat: list = []
    current = nodes[0]
    c = shape[0]
    for level in range(levels):
        current = ff.Node(current, fm.IRevNetDownsampling, {})
        nodes.append(current)
        c *= 4
        for _ in range(steps):
            current = ff.Node(
                current,
                fm.AllInOneBlock,
                {
                    "subnet_constructor": _Subnet(hidden, True),
                    "affine_clamping": 2.0,
                    "learned_householder_permutation": c,
                },
            )
            nodes.append(current)
        if level < levels - 1:
            split = ff.Node(current, fm.Split, {"section_sizes": [c - c // 2, c // 2], "dim": 0})
            out = ff.Node(split.out1, fm.Flatten, {})
            nodes += [split, out]
            flat.append(out)
            current = split.out0
            c -= c // 2
    last = ff.Node(current, fm.Flatten, {})
    concat = ff.Node([last.out0, *(f.out0 for f in flat)], fm.Concat, {"dim": 0})
    nodes += [last, concat, ff.OutputNode(concat, name="output")]
    return ff.GraphINN(nodes)


def build(arch: str, *, seed: int = 0) -> Adapter:
    """``GLOWCouplingBlock`` stacks; Glow from ``AllInOneBlock`` in a multi-scale ``GraphINN``."""
    spec = ARCHS[arch]
    if arch == "glow28":
        inn = _glow(spec.shape, spec.levels, spec.layers, spec.hidden)
        note = (
            "AllInOneBlock: global affine (no data-dependent init) for actnorm, C learned "
            "Householder reflections for the LU 1x1 conv; no learned split prior"
        )
    else:
        inn = _realnvp(spec.shape[0], spec.layers, spec.hidden)
        note = "soft-clamped scale 2*0.636*atan(s/2)"
    dim = int(torch.Size(spec.shape).numel())

    def log_prob(x: Tensor) -> Tensor:
        z, log_jac = inn(x)
        return standard_normal_log_prob(z) + log_jac

    def sample(n: int) -> Tensor:
        ref = next(inn.parameters())
        z = torch.randn(n, dim, dtype=ref.dtype, device=ref.device)
        return inn(z, rev=True)[0].reshape(n, *spec.shape)

    return Adapter("freia", arch, inn, log_prob, sample, note)
