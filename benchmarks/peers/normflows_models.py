"""normflows (Stimper et al. 2023, VincentStimper/normalizing-flows) benchmark architectures.

normflows' flows map latent → data in ``forward``; ``log_prob`` runs their ``inverse``.
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmarks.peers import ARCHS, Adapter


def _realnvp(features: int, layers: int, hidden: int) -> nn.Module:
    import normflows as nf

    half = features // 2
    flows = [
        nf.flows.AffineCouplingBlock(
            nf.nets.MLP([features - half, hidden, hidden, 2 * half], init_zeros=True),
            scale=True,
            scale_map="exp",
            split_mode="channel" if k % 2 == 0 else "channel_inv",
        )
        for k in range(layers)
    ]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), flows)


def _glow(shape: tuple[int, ...], levels: int, steps: int, hidden: int) -> nn.Module:
    import normflows as nf

    c, h, w = shape
    bases, flows, merges = [], [], []
    for i in range(levels):  # normflows lists levels from the latent end
        depth = levels - i  # squeezes between the data and this level; half is factored out
        channels, size = c * 2 ** (depth + 1), (h // 2**depth, w // 2**depth)
        flows.append(
            [
                nf.flows.GlowBlock(channels, hidden, scale=True, scale_map="sigmoid", split_mode="channel")
                for _ in range(steps)
            ]
            + [nf.flows.Squeeze()]
        )
        latent = (channels, *size) if i == 0 else (channels // 2, *size)
        bases.append(nf.distributions.DiagGaussian(latent, trainable=False))
        if i > 0:
            merges.append(nf.flows.Merge())
    return nf.MultiscaleFlow(bases, flows, merges, class_cond=False)


def build(arch: str, *, seed: int = 0) -> Adapter:
    """``AffineCouplingBlock`` stacks (exp scale); Glow from ``GlowBlock`` + ``MultiscaleFlow``."""
    spec = ARCHS[arch]
    if arch == "glow28":
        model = _glow(spec.shape, spec.levels, spec.layers, spec.hidden)
        note = "no learned split prior (factored-out half under N(0, I))"
    else:
        model = _realnvp(spec.shape[0], spec.layers, spec.hidden)
        note = "unbounded exp scale"

    def log_prob(x: Tensor) -> Tensor:
        return model.log_prob(x, None) if arch == "glow28" else model.log_prob(x)

    def sample(n: int) -> Tensor:
        return model.sample(n)[0]

    return Adapter("normflows", arch, model, log_prob, sample, note)
