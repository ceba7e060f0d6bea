"""Planar flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", §4.1)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.composition import Architecture, Sequential
from flowkit.params import Range
from flowkit.plugins.transforms.root_finding import (
    newton_step,
    softplus_inverse,
    solve_tanh_equation,
    tanh_derivative,
)
from flowkit.transform import Shape, Transform, require_rank

#: ``wᵀû ≥ −1 + MARGIN`` (instead of the paper's ``≥ −1``): the Jacobian stays non-singular in
#: floating point even when ``softplus`` underflows to 0 for extreme raw parameters.
MARGIN = 1e-4


class PlanarLayer(Transform):
    """One planar layer; its generative map f(z) = z + û·tanh(wᵀz + b) is ``inverse``.

    Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", §4.1 eqs. 10–12 and
    appendix A. The generative map (latent → data, flowkit's ``inverse``) and its log-det::

        f(z) = z + û·h(wᵀz + b),   h = tanh
        log|det ∂f/∂z| = log|1 + ûᵀψ(z)| = log(1 + (wᵀû)·h'(wᵀz + b)),   ψ(z) = h'(wᵀz + b)·w

    ``u`` is reparameterised so that ``wᵀû ≥ −1`` (appendix A), which makes ``f`` invertible::

        û = u + (m(wᵀu) − wᵀu)·w/‖w‖²,   m(a) = −1 + 1e-4 + softplus(a)

    (the ``1e-4`` margin keeps the Jacobian non-singular in floating point). ``forward``
    (data → latent) inverts ``f``: the solution lies on the line ``z = x − û·h(α)``, where
    ``α = wᵀz + b`` is the unique root of the strictly increasing scalar equation
    ``α + (wᵀû)·h(α) = wᵀx + b``, found by bracketed safeguarded Newton iteration
    (:func:`~flowkit.plugins.transforms.root_finding.solve_tanh_equation`, bracket from
    ``|h| ≤ 1``); exact first-order gradients come from one differentiable Newton step at the
    root. Its log-det is minus the generative one at the found ``z``.
    """

    input_ranks = (1,)
    test_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, event_shape: Shape, *, init_scale: Annotated[float, Range(0)] = 0.1) -> None:
        super().__init__(event_shape)
        require_rank(
            "PlanarLayer",
            self.event_shape,
            self.input_ranks,
            "Planar flows act on flat vectors: flatten the data first.",
        )
        dim = self.event_shape[0]
        w = torch.randn(dim) / dim**0.5
        u = torch.randn(dim) * init_scale
        norm_sq = w.square().sum()
        # wᵀu = softplus⁻¹(1 − MARGIN) makes m(wᵀu) = 0: û ⊥ w and f starts near the identity
        u = u + (softplus_inverse(1.0 - MARGIN) - w @ u) * w / norm_sq
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(u)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> tuple[Tensor, Tensor]:
        """The constrained ``û`` (appendix A) and ``wᵀû = m(wᵀu) ≥ −1 + 1e-4``.

        ``wᵀû`` is returned in its analytic form ``m(wᵀu)`` rather than recomputed as ``w @ û``,
        which cancels catastrophically when ``wᵀu ≪ 0`` and could dip below −1 by rounding.
        """
        wu = self.w @ self.u
        wu_hat = -1.0 + MARGIN + F.softplus(wu)
        norm_sq = self.w.square().sum().clamp_min(torch.finfo(self.w.dtype).tiny)
        return self.u + (wu_hat - wu) * self.w / norm_sq, wu_hat

    def _logdet(self, wu: Tensor, alpha: Tensor) -> Tensor:
        """``log(1 + (wᵀû)·h'(α))`` per example (positive argument by construction)."""
        return torch.log1p(wu * tanh_derivative(alpha))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generative map ``x = z + û·tanh(wᵀz + b)`` and ``log|1 + ûᵀψ(z)|``."""
        self.check_input(z, "inverse")
        u_hat, wu = self.u_hat()
        alpha = z @ self.w + self.b
        x = z + torch.tanh(alpha).unsqueeze(1) * u_hat
        return x, self._logdet(wu, alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Invert the generative map: ``z = x − û·tanh(α)`` with ``α + (wᵀû)·tanh(α) = wᵀx + b``."""
        self.check_input(x)
        u_hat, wu = self.u_hat()
        target = x @ self.w + self.b
        root = solve_tanh_equation(target.detach(), wu.detach(), target.new_ones(()), target.new_zeros(()))
        residual = root + wu * torch.tanh(root) - target
        alpha = newton_step(root, residual, 1.0 + wu * tanh_derivative(root))
        z = x - torch.tanh(alpha).unsqueeze(1) * u_hat
        return z, -self._logdet(wu, alpha)


class _LayerClass(Protocol):
    """A :class:`LayerStack` layer's constructor (its class): ``layer(event_shape, init_scale=…)``."""

    def __call__(self, event_shape: Shape, *, init_scale: float) -> Transform: ...


class LayerStack(Architecture):
    """``num_layers`` fresh copies of one vector layer composed, f_K ∘ … ∘ f_1 (planar, radial).

    Subclasses name the layer class (``layer``, built as ``layer(event_shape,
    init_scale=init_scale)``) and the family in messages (``family``); the log-dets add up
    (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", eq. 13).
    """

    input_ranks = (1,)
    test_params: ClassVar[dict[str, Any]] = {"num_layers": [2, 3]}
    layer: ClassVar[_LayerClass]
    family: ClassVar[str]

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 8,
        init_scale: Annotated[float, Range(0)] = 0.1,
    ) -> None:
        super().__init__(event_shape)
        require_rank(
            self.family.lower(),
            self.event_shape,
            self.input_ranks,
            f"{self.family} flows act on flat vectors: flatten the data first.",
        )
        self.flow = Sequential(self.layer(self.event_shape, init_scale=init_scale) for _ in range(num_layers))


class PlanarFlow(LayerStack):
    """A stack of planar layers f_K ∘ … ∘ f_1 (Rezende & Mohamed 2015, §4.1 eqs. 10–13).

    Each layer is a :class:`PlanarLayer`, ``f_k(z) = z + û_k·tanh(w_kᵀz + b_k)``, with ``û_k``
    constrained so that ``w_kᵀû_k ≥ −1`` (appendix A); the log-dets add up (eq. 13). ``inverse``
    (latent → data) is the paper's generative map with its analytic log-det — the direction the
    ``reverse-kl`` objective samples and differentiates; ``forward`` (data → latent, for
    maximum likelihood) inverts each layer by a bracketed Newton solve of a scalar equation.
    Vectors ``(D,)`` only; ``num_layers`` is ``K``. Each layer starts near the identity: ``w``
    is drawn from ``N(0, 1/D)`` and ``u`` is set so that ``m(wᵀu) = 0`` (``û ⊥ w``) with a
    random part of std ``init_scale``.

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``event_shape`` (injected): the shape ``(D,)`` of one vector; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 8): the number of layers ``K``.
    * ``init_scale`` (float ≥ 0, default 0.1): std of the random part of the initial ``u``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.planar import PlanarFlow
        >>> _ = torch.manual_seed(0)
        >>> flow = PlanarFlow((2,), num_layers=4, init_scale=0.5)
        >>> z = torch.randn(8, 2)
        >>> x, logdet = flow.inverse(z)  # the generative map of the paper
        >>> z_back, fwd_logdet = flow(x)  # Newton solves, layer by layer
        >>> torch.allclose(z_back, z, atol=1e-4), torch.allclose(fwd_logdet, -logdet, atol=1e-4)
        (True, True)
    """

    layer = PlanarLayer
    family = "Planar"
