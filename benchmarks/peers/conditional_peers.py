"""Peer rows of ``flowkit bench conditional``: conditional flows of zuko and nflows.

:func:`build` returns a :class:`flowkit.bench.conditional.models.ConditionalModel` for a row of
:data:`flowkit.bench.conditional.models.ROWS` whose library is ``zuko`` or ``nflows``, with the
shared sizes of :class:`~flowkit.bench.conditional.models.Arch` (flow layers, conditioner depth
and width); a library that is not installed raises ``MissingLibrary``. Each library keeps its
own parameterisation, reported as the row's note:

* zuko (Rozet et al., probabilists/zuko): ``zuko.flows.MAF`` / ``NSF`` (orders alternate
  identity/reversed between layers) and ``zuko.flows.RealNVP`` (alternating checkered masks);
  the observation enters every conditioner as context; flows are lazy (``flow(x)`` builds the
  distribution).
* nflows (Durkan et al. 2019, bayesiains/nflows): ``MaskedAffineAutoregressiveTransform`` with
  feed-forward MADE blocks (``num_hidden − 1`` blocks after the input layer, context added to the
  first hidden layer), scale ``softplus(·)+1e-3``, and reversal permutations;
  ``AffineCouplingTransform`` with an MLP conditioner on ``[x_kept, context]`` and alternating
  half masks, scale ``sigmoid(·+2)+1e-3``: at most 1.001, so a coupling can only contract in the
  data → noise direction, which hurts on narrow posteriors (two-moons).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from flowkit.bench.conditional.models import Arch, ConditionalModel, MissingLibrary, RowSpec

INSTALL_HINT = "pip install 'torch-flowkit[bench]'"


def _require(library: str) -> None:
    if importlib.util.find_spec(library) is None:
        raise MissingLibrary(f"{library} is not installed ({INSTALL_HINT})")


# -- zuko ------------------------------------------------------------------------------------------
def _zuko(spec: RowSpec, features: int, context: int, arch: Arch) -> ConditionalModel:
    _require("zuko")
    import zuko

    hidden = (arch.hidden,) * arch.num_hidden
    cls = {"maf": zuko.flows.MAF, "spline": zuko.flows.NSF, "coupling": zuko.flows.RealNVP}
    flow = cls[spec.family](features, context, transforms=arch.transforms, hidden_features=hidden)
    notes = {
        "maf": "soft-clipped log-scale",
        "spline": "8 bins on [-5, 5], identity tails",
        "coupling": "checkered masks, soft-clipped log-scale",
    }

    def log_prob(theta: Tensor, x: Tensor) -> Tensor:
        return flow(x).log_prob(theta)

    def sample(x: Tensor, n: int) -> Tensor:
        return flow(x).sample((n,))

    return ConditionalModel(flow, log_prob, sample, notes[spec.family])


# -- nflows ----------------------------------------------------------------------------------------
class _ContextMLP(nn.Module):
    """``net(inputs, context)``: an MLP on ``[inputs, context]`` (nflows' coupling conditioner)."""

    def __init__(self, n_in: int, n_out: int, context: int, hidden: int, num_hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in + context
        for _ in range(num_hidden):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(inputs if context is None else torch.cat([inputs, context], -1))


class _NetFactory:
    """``transform_net_create_fn(n_in, n_out)`` for nflows' couplings."""

    def __init__(self, context: int, hidden: int, num_hidden: int) -> None:
        self.context, self.hidden, self.num_hidden = context, hidden, num_hidden

    def __call__(self, n_in: int, n_out: int) -> nn.Module:
        return _ContextMLP(n_in, n_out, self.context, self.hidden, self.num_hidden)


def _nflows(spec: RowSpec, features: int, context: int, arch: Arch) -> ConditionalModel:
    _require("nflows")
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform
    from nflows.transforms.permutations import ReversePermutation

    if spec.family == "maf":
        layers: list[nn.Module] = []
        for _ in range(arch.transforms):
            layers += [
                MaskedAffineAutoregressiveTransform(
                    features,
                    arch.hidden,
                    context_features=context,
                    num_blocks=max(arch.num_hidden - 1, 0),
                    use_residual_blocks=False,
                ),
                ReversePermutation(features),
            ]
        note = "feed-forward MADE, scale softplus(·)+1e-3"
    elif spec.family == "coupling":
        layers = []
        for k in range(arch.transforms):
            mask = torch.zeros(features)
            half = (features + 1) // 2
            if k % 2 == 0:
                mask[half:] = 1
            else:
                mask[:half] = 1
            layers.append(AffineCouplingTransform(mask, _NetFactory(context, arch.hidden, arch.num_hidden)))
        note = (
            "half masks, MLP on [x_kept, context], scale sigmoid(·+2)+1e-3 ≤ 1.001: each "
            "coupling can only contract data → noise"
        )
    else:
        raise MissingLibrary(f"no nflows adapter for the {spec.family} family")
    flow = Flow(CompositeTransform(layers), StandardNormal([features]))

    def log_prob(theta: Tensor, x: Tensor) -> Tensor:
        return flow.log_prob(theta, context=x)

    def sample(x: Tensor, n: int) -> Tensor:
        return flow.sample(n, context=x.reshape(1, -1))[0]

    return ConditionalModel(flow, log_prob, sample, note)


def build(spec: RowSpec, features: int, context: int, arch: Arch) -> ConditionalModel:
    """The peer row ``spec`` (``spec.library`` is ``zuko`` or ``nflows``)."""
    if spec.library == "zuko":
        return _zuko(spec, features, context, arch)
    if spec.library == "nflows":
        return _nflows(spec, features, context, arch)
    raise MissingLibrary(f"no conditional adapter for {spec.library}")
