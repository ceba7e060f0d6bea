"""Radial flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", §4.1)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.params import Range
from flowkit.plugins.transforms.planar import LayerStack
from flowkit.plugins.transforms.root_finding import softplus_inverse
from flowkit.transform import Shape, Transform, require_rank

#: ``α ≥ ALPHA_MIN`` and ``α + β ≥ MARGIN·α``: strictly inside the invertible region, also when
#: ``softplus`` underflows to 0 for extreme raw parameters (the paper asks ``α > 0``, ``β ≥ −α``).
ALPHA_MIN = 1e-4
MARGIN = 1e-4


class RadialLayer(Transform):
    """One radial layer; its generative map f(z) = z + β·h(α, r)·(z − z₀) is ``inverse``.

    Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", §4.1 eqs. 12 and 14,
    and appendix A. The generative map (latent → data, flowkit's ``inverse``) and its log-det::

        f(z) = z + β·h(α, r)·(z − z₀),   h(α, r) = 1/(α + r),   r = ‖z − z₀‖
        log|det ∂f/∂z| = (D − 1)·log(1 + β·h) + log(1 + β·h + β·h'(α, r)·r)
                       = (D − 1)·log(1 + β/(α + r)) + log(1 + α·β/(α + r)²)

    with ``α = 1e-4 + softplus(α')`` and ``β = −(1 − 1e-4)·α + softplus(β')``, so that ``α > 0``
    and ``β > −α`` (invertibility, appendix A; the ``1e-4`` margins keep the Jacobian
    non-singular in floating point). ``forward`` (data → latent) inverts ``f`` in closed form:
    ``f`` moves points along rays from ``z₀``, so ``ρ = ‖x − z₀‖ = r·(1 + β/(α + r))``, i.e.
    ``r² + (α + β − ρ)·r − α·ρ = 0``, whose unique non-negative root is taken with the
    cancellation-free form of the quadratic formula; then ``z = z₀ + (x − z₀)·(α + r)/(α + r + β)``.
    Its log-det is minus the generative one at that ``z``.
    """

    input_ranks = (1,)
    test_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, event_shape: Shape, *, init_scale: Annotated[float, Range(0)] = 0.1) -> None:
        super().__init__(event_shape)
        require_rank(
            "RadialLayer",
            self.event_shape,
            self.input_ranks,
            "Radial flows act on flat vectors: flatten the data first.",
        )
        dim = self.event_shape[0]
        self.z0 = nn.Parameter(torch.randn(dim))
        # α = 1 and β ≈ 0 (a near-identity map) up to noise of std init_scale
        alpha_raw = softplus_inverse(1.0 - ALPHA_MIN)
        beta_raw = softplus_inverse(1.0 - MARGIN)
        self.alpha_raw = nn.Parameter(torch.tensor(alpha_raw) + init_scale * torch.randn(()))
        self.beta_raw = nn.Parameter(torch.tensor(beta_raw) + init_scale * torch.randn(()))

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """The constrained ``(α, β)``: ``α ≥ 1e-4`` and ``α + β ≥ 1e-4·α``."""
        alpha = ALPHA_MIN + F.softplus(self.alpha_raw)
        beta = -(1.0 - MARGIN) * alpha + F.softplus(self.beta_raw)
        return alpha, beta

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        """Eq. 14: ``(D − 1)·log(1 + β/(α + r)) + log(1 + α·β/(α + r)²)``."""
        ar = alpha + r
        return (self.event_shape[0] - 1) * torch.log1p(beta / ar) + torch.log1p(alpha * beta / ar.square())

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generative map ``x = z + β·(z − z₀)/(α + r)`` and its log-det (eq. 14)."""
        self.check_input(z, "inverse")
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=1)
        x = z + (beta / (alpha + r)).unsqueeze(1) * diff
        return x, self._logdet(r, alpha, beta)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Closed-form inverse: ``r`` from ``r² + (α + β − ρ)·r − α·ρ = 0``, then ``z``."""
        self.check_input(x)
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        rho = torch.linalg.vector_norm(diff, dim=1)
        half_b = 0.5 * (alpha + beta - rho)
        root = torch.sqrt(half_b.square() + alpha * rho)
        # r = −B/2 + √(B²/4 + αρ), written without cancellation for either sign of B (|B| in the
        # second form changes nothing where it is used, and keeps the unused one finite)
        r = torch.where(half_b <= 0, root - half_b, alpha * rho / (root + half_b.abs()))
        ar = alpha + r
        z = self.z0 + (ar / (ar + beta)).unsqueeze(1) * diff
        return z, -self._logdet(r, alpha, beta)


class RadialFlow(LayerStack):
    """A stack of radial layers f_K ∘ … ∘ f_1 (Rezende & Mohamed 2015, §4.1 eqs. 12–14).

    Each layer is a :class:`RadialLayer`, ``f_k(z) = z + β_k·(z − z₀ₖ)/(α_k + ‖z − z₀ₖ‖)``, with
    ``α_k > 0`` and ``β_k > −α_k`` (appendix A); the log-dets add up (eq. 13). ``inverse``
    (latent → data) is the paper's generative map with its analytic log-det — the direction the
    ``reverse-kl`` objective samples and differentiates; ``forward`` (data → latent) inverts each
    layer in closed form (a quadratic in the radius). Vectors ``(D,)`` only; ``num_layers`` is
    ``K``; each reference point ``z₀`` starts as a standard normal draw and ``α = 1``, ``β ≈ 0``
    up to noise of std ``init_scale``.

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``event_shape`` (injected): the shape ``(D,)`` of one vector; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 8): the number of layers ``K``.
    * ``init_scale`` (float ≥ 0, default 0.1): std of the noise around the initial ``α = 1``, ``β ≈ 0``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.radial import RadialFlow
        >>> _ = torch.manual_seed(0)
        >>> flow = RadialFlow((2,), num_layers=4, init_scale=0.5)
        >>> z = torch.randn(8, 2)
        >>> x, logdet = flow.inverse(z)  # the generative map of the paper
        >>> z_back, fwd_logdet = flow(x)  # closed-form inverse, layer by layer
        >>> torch.allclose(z_back, z, atol=1e-4), torch.allclose(fwd_logdet, -logdet, atol=1e-4)
        (True, True)
    """

    layer = RadialLayer
    family = "Radial"
