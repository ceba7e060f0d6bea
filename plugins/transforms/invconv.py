"""Invertible 1×1 convolution, plain or LU-decomposed (Glow §3.2)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from flowkit.params import Range
from flowkit.reconstruction import generic_rule
from flowkit.transform import Shape, Transform, require_rank


def random_rotation(size: int, seed: int) -> Tensor:
    """A random orthogonal ``size × size`` matrix (float64), reproducible from ``seed``.

    ``Q`` of the QR decomposition of a standard Gaussian matrix, with the columns' signs fixed
    by ``diag(R) > 0`` so that ``Q`` is Haar-distributed (Mezzadri 2007, "How to generate random
    matrices from the classical compact groups", §5).
    """
    gen = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def apply_channel_matrix(matrix: Tensor, x: Tensor) -> Tensor:
    """``y[b, i, …] = Σ_j M[i, j] x[b, j, …]``: a 1×1 convolution (or a dense map on vectors)."""
    return torch.einsum("ij,bj...->bi...", matrix, x)


class InvConv1x1(Transform):
    """Invertible 1×1 convolution y = W x per pixel, log|det J| = H·W·log|det W| (Glow §3.2).

    A learned ``C × C`` matrix mixes the channels of every pixel (Kingma & Dhariwal 2018, "Glow:
    Generative Flow with Invertible 1×1 Convolutions", §3.2, eq. (9)-(10)); it generalises a
    fixed channel permutation. On vectors ``(D,)`` it is a learned dense linear map,
    ``log|det J| = log|det W|``. ``W`` starts as a random rotation drawn from ``init_seed``.

    ``lu = true`` (the default) parametrises ``W = P L (U + diag(sign(s) ⊙ exp(log|s|)))``
    (§3.2, "LU decomposition") with the permutation ``P`` and the signs fixed (buffers), ``L``
    unit lower-triangular, ``U`` strictly upper-triangular and ``log|s|`` learned; then
    ``log|det W| = Σ log|s|`` costs O(C) and the inverse uses triangular solves.
    ``lu = false`` learns ``W`` directly; ``log|det W|`` comes from ``torch.linalg.slogdet``
    (O(C³)) and the inverse from ``torch.linalg.inv``.

    References:

    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``lu`` (bool, default True): parametrise ``W`` by its LU decomposition (``log|det W|`` in O(C));
      ``False``: learn ``W`` directly.
    * ``init_seed`` (int in [0, 18446744073709551615], default 0): seed of the random rotation ``W`` starts
      from.
    * ``num_classes`` (injected): accepted for the common signature and ignored: the layer reads no context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.invconv import InvConv1x1
        >>> layer = InvConv1x1((3, 4, 4), lu=False)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> y, logdet = layer(x)
        >>> expected = 16 * torch.linalg.slogdet(layer.weight)[1]  # H·W·log|det W|
        >>> torch.allclose(logdet, expected.expand(2), atol=1e-5)
        True
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
        True
    """

    input_ranks = (1, 3)
    test_params: ClassVar[dict[str, Any]] = {"lu": [True, False], "init_seed": [0, 1]}
    inversion_rule = generic_rule  # memory-free backprop: inverse, then recomputation
    perm: Tensor  # buffers of the LU form (declared for type checkers: nn.Module types them Tensor | Module)
    sign: Tensor

    def __init__(
        self,
        event_shape: Shape,
        *,
        lu: bool = True,
        init_seed: Annotated[int, Range(0, 2**64 - 1, note="a torch.Generator seed")] = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        require_rank(
            "InvConv1x1",
            self.event_shape,
            self.input_ranks,
            "Flatten the data for vectors, or give images as (C, H, W).",
        )
        self.lu = bool(lu)
        self._positions = math.prod(self.event_shape[1:])  # H·W for images, 1 for vectors
        dtype = torch.get_default_dtype()
        rotation = random_rotation(self.event_shape[0], init_seed)
        if self.lu:
            perm, lower, upper = torch.linalg.lu(rotation)
            diag = torch.diagonal(upper)
            self.register_buffer("perm", perm.to(dtype))
            self.register_buffer("sign", torch.sign(diag).to(dtype))
            self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
            self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
            self.log_abs_diag = nn.Parameter(torch.log(diag.abs()).to(dtype))
        else:
            self.weight = nn.Parameter(rotation.to(dtype))

    def _lu_factors(self) -> tuple[Tensor, Tensor]:
        """``L`` (unit lower) and ``U + diag(sign ⊙ exp(log|s|))`` (upper), masks applied."""
        eye = torch.eye(self.event_shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_abs_diag))
        return lower, upper

    def matrix(self) -> Tensor:
        """The assembled ``C × C`` matrix ``W``."""
        if not self.lu:
            return self.weight
        lower, upper = self._lu_factors()
        return self.perm @ lower @ upper

    def inverse_matrix(self) -> Tensor:
        """``W⁻¹`` (``U⁻¹ L⁻¹ Pᵀ`` by triangular solves in the LU form)."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        lower, upper = self._lu_factors()
        inv_lp = torch.linalg.solve_triangular(lower, self.perm.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, inv_lp, upper=True)

    def log_abs_det(self) -> Tensor:
        """``log|det W|`` (a scalar)."""
        if self.lu:
            return self.log_abs_diag.sum()
        return torch.linalg.slogdet(self.weight)[1]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = W x`` at every pixel; ``log|det J| = H·W·log|det W|``."""
        self.check_input(x)
        logdet = self.zero_logdet(x) + self._positions * self.log_abs_det()
        return apply_channel_matrix(self.matrix(), x), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = W⁻¹ y`` at every pixel; ``log|det J| = −H·W·log|det W|``."""
        self.check_input(y, "inverse")
        logdet = self.zero_logdet(y) - self._positions * self.log_abs_det()
        return apply_channel_matrix(self.inverse_matrix(), y), logdet

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lu={self.lu}"
