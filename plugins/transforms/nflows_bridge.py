"""Bridge to nflows: any ``nflows`` transform becomes a flowkit :class:`~flowkit.transform.Transform`.

nflows (Durkan, Bekasov, Murray & Papamakarios 2020, "nflows: normalizing flows in PyTorch",
doi:10.5281/zenodo.4296286) uses the same convention as flowkit: ``forward(inputs, context)``
maps data to noise and returns ``(outputs, logabsdet)`` with ``logabsdet = log|det ∂out/∂in|``
per example, and ``inverse`` maps back. :class:`NflowsTransform` wraps any nflows transform
instance; the registered plugins build three standard nflows architectures and wrap them:

* ``nflows-rq-coupling`` — :class:`NflowsRQCoupling`, rational-quadratic spline couplings
  (Durkan et al. 2019, "Neural Spline Flows");
* ``nflows-maf`` — :class:`NflowsMAF`, masked affine autoregressive flow (Papamakarios et al.
  2017, "Masked Autoregressive Flow for Density Estimation");
* ``nflows-realnvp`` — :class:`NflowsRealNVP`, the transform of nflows' own ``SimpleRealNVP``
  (Dinh et al. 2017, "Density estimation using Real NVP"), the nflows baseline for comparisons.

nflows is an optional dependency: it is imported only when one of these is built, so this module
imports (and ``flowkit list`` shows the summaries) without it; building one without nflows raises
:class:`~flowkit.errors.PluginError` saying how to install it.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Annotated, Any, ClassVar, TypedDict

import torch
from torch import Tensor, nn

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec, context_width
from flowkit.errors import PluginError, ShapeError
from flowkit.extras import install_hint
from flowkit.params import Range
from flowkit.transform import Shape, Transform, require_rank


def require_nflows(owner: str) -> ModuleType:
    """Import and return the ``nflows`` package, or raise :class:`PluginError` naming the fix
    (the ``nflows`` extra: ``pip install 'torch-flowkit[nflows]'``)."""
    try:
        return importlib.import_module("nflows")
    except ImportError as exc:
        raise PluginError(
            f"install nflows ({install_hint('nflows')}, or pip install nflows) to use {owner}; "
            f"it is an optional dependency of flowkit ({type(exc).__name__}: {exc})."
        ) from exc


class NflowsTransform(Transform):
    """Any nflows transform as a flowkit transform (same data → latent direction, same log-det).

    ``y, log|det ∂y/∂x| = t(x, c)`` and ``x, log|det ∂x/∂y| = t.inverse(y, c)`` are those of the
    wrapped ``nflows.transforms.base.Transform`` (Durkan et al. 2020, "nflows"), which uses the
    same convention as flowkit (``forward`` maps data to noise). The nflows transform is a
    submodule, so ``state_dict``, ``.to()`` and ``.double()`` reach its parameters and buffers.

    ``event_shape`` is the per-example shape the nflows transform takes (most nflows transforms
    take vectors ``(D,)``; flatten images first with :func:`flowkit.composition.Flatten`) and
    ``output_shape`` the one it returns (default: the same). A conditional bridge passes nflows
    the context as a float tensor in the input's dtype: class labels (``conditional=True`` with
    ``num_classes``; the nflows transform must take ``context_features=num_classes``) one-hot as
    ``(B, num_classes)``, a real-valued context (``context_features=k``) as it is, ``(B, k)``;
    an unconditional one gives nflows ``context=None``. Set
    ``volume_preserving=True`` only if the nflows transform's log-det is identically zero
    (permutations); the log-det is then returned as exact zeros.

    Every nflows result is checked: the output must have shape ``(B, *output_shape)`` and the
    log-det must be ``(B,)`` (a scalar or a Python number is broadcast); both are returned in the
    input's dtype and on its device.
    """

    input_ranks = (1, 3)

    def __init__(
        self,
        event_shape: Shape,
        nflows_transform: nn.Module,
        *,
        output_shape: Shape | None = None,
        conditional: bool | None = None,
        num_classes: int | None = None,
        volume_preserving: bool = False,
        context_features: int | None = None,
    ) -> None:
        nflows = require_nflows("the nflows bridge (NflowsTransform)")
        base = nflows.transforms.base.Transform
        if not isinstance(nflows_transform, base):
            raise PluginError(
                f"NflowsTransform wraps an instance of nflows.transforms.base.Transform, but got "
                f"{type(nflows_transform).__name__}; pass an nflows transform (e.g. "
                f"nflows.transforms.LULinear(features)), or subclass flowkit.Transform directly."
            )
        super().__init__(event_shape, output_shape)
        if math.prod(self.event_shape) != math.prod(self.output_shape):
            raise ShapeError(
                f"NflowsTransform: event_shape {self.event_shape} and output_shape "
                f"{self.output_shape} hold different numbers of scalars; an invertible transform "
                f"preserves the dimension."
            )
        self.context_spec = context_spec("NflowsTransform", conditional, num_classes, context_features)
        self.nflows_transform = nflows_transform
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        self.volume_preserving = volume_preserving  # type: ignore[misc]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data ``(B, *event_shape)`` to ``(B, *output_shape)`` with the nflows forward."""
        return self._call_nflows(x, context, "forward")

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map ``(B, *output_shape)`` back to data ``(B, *event_shape)`` with the nflows inverse."""
        return self._call_nflows(y, context, "inverse")

    def _nflows_context(self, inp: Tensor, context: Tensor | None) -> Tensor | None:
        """The context nflows expects: one-hot labels, the real-valued context, or ``None``."""
        if self.context_spec is None:
            return None
        return self.context_spec.features(context, inp, self._owner())

    def _owner(self) -> str:
        return f"NflowsTransform({type(self.nflows_transform).__name__})"

    def _call_nflows(self, inp: Tensor, context: Tensor | None, direction: str) -> tuple[Tensor, Tensor]:
        from nflows.transforms.base import InputOutsideDomain, InverseNotAvailable

        self.check_input(inp, direction)
        ctx = self._nflows_context(inp, context)
        method = self.nflows_transform if direction == "forward" else self.nflows_transform.inverse
        try:
            out, logdet = method(inp, ctx)
        except InverseNotAvailable as exc:
            raise PluginError(
                f"{self._owner()}: nflows has no inverse for this transform in its current mode "
                f"({exc or 'InverseNotAvailable'}). nflows' BatchNorm inverts only in eval mode: "
                f"call .eval() before sampling, or build without batch norm."
            ) from exc
        except InputOutsideDomain as exc:
            raise ShapeError(
                f"{self._owner()}: the {direction} input lies outside the domain of the nflows "
                f"transform (a spline without tails is defined on its interval only); rescale "
                f"the data or use tails='linear'."
            ) from exc
        return self._checked(out, logdet, inp, direction)

    def _checked(self, out: Tensor, logdet: Any, inp: Tensor, direction: str) -> tuple[Tensor, Tensor]:
        """Check the nflows result's shapes and give both tensors the input's dtype and device."""
        batch = inp.shape[0]
        shape = self.output_shape if direction == "forward" else self.event_shape
        if tuple(out.shape) != (batch, *shape):
            raise ShapeError(
                f"{self._owner()}.{direction} returned outputs of shape {tuple(out.shape)}, "
                f"expected {(batch, *shape)}; build the NflowsTransform with the event_shape and "
                f"output_shape the nflows transform really takes and returns."
            )
        out = out.to(device=inp.device, dtype=inp.dtype)
        if self.volume_preserving:
            return out, self.zero_logdet(inp)
        logdet = torch.as_tensor(logdet).to(device=inp.device, dtype=inp.dtype)
        if logdet.dim() == 0:
            logdet = logdet.expand(batch)
        elif logdet.numel() == batch:
            logdet = logdet.reshape(batch)
        else:
            raise ShapeError(
                f"{self._owner()}.{direction} returned a logabsdet of shape "
                f"{tuple(logdet.shape)}, expected one value per example, ({batch},)."
            )
        return out, logdet

    def extra_repr(self) -> str:
        extra = f", context={self.context_spec}" if self.context_spec is not None else ""
        return super().extra_repr() + extra


class _ContextArgs(TypedDict):
    """The context arguments a :class:`_NflowsVectorFlow` passes to its :class:`NflowsTransform`."""

    conditional: bool
    num_classes: int | None
    context_features: int | None


class _NflowsVectorFlow(Architecture):
    """Shared shell of the registered nflows plugins: flatten, then one wrapped nflows flow.

    Images ``(C, H, W)`` are flattened to ``D = C·H·W`` features first (the nflows transforms
    used here take vectors); the latent has shape ``(D,)``. The constructor checks the shape and
    the context, then that nflows is installed (naming the registered ``plugin``).
    """

    input_ranks = (1, 3)
    plugin: ClassVar[str]

    def __init__(
        self,
        event_shape: Shape,
        conditional: bool | None,
        num_classes: int | None,
        context_features: int | None,
    ) -> None:
        owner = type(self).__name__
        shape = tuple(int(s) for s in event_shape)
        require_rank(owner, shape, self.input_ranks)
        dim = math.prod(shape)
        super().__init__(shape, (dim,))
        spec = context_spec(owner, conditional, num_classes, context_features)
        #: the context arguments of the wrapped transform, and the width its networks read
        self._context_args: _ContextArgs = {
            "conditional": spec is not None,
            "num_classes": num_classes,
            "context_features": context_features,
        }
        self.context_width = context_width(spec) or None
        if dim < self.min_channels:
            raise ShapeError(
                f"{owner} needs at least {self.min_channels} scalars per example (its couplings "
                f"split the features in two), but the data has shape {shape}."
            )
        require_nflows(f"{self.plugin} ({owner})")

    def _assemble(self, nflows_transform: nn.Module) -> None:
        """Store ``[Flatten] → NflowsTransform(nflows_transform)`` as ``self.flow``."""
        dim = self.output_shape[0]
        steps: list[Transform] = [] if len(self.event_shape) == 1 else [Flatten(self.event_shape)]
        steps.append(NflowsTransform((dim,), nflows_transform, **self._context_args))
        self.flow = Sequential(steps)


class ResidualNetFactory:
    """Picklable ``(in_features, out_features) → nflows ResidualNet`` for nflows couplings.

    nflows couplings build their conditioner from a ``transform_net_create_fn``; a module-level
    class (rather than a closure) keeps the whole model picklable. The network is nflows'
    ``ResidualNet``: a linear layer, ``num_blocks`` pre-activation residual blocks of ``hidden``
    units (ReLU; context, when given, is appended to the input and gates each block), a linear
    output layer (He et al. 2016, "Identity mappings in deep residual networks").
    """

    def __init__(self, hidden: int, num_blocks: int, context_features: int | None) -> None:
        self.hidden = hidden
        self.num_blocks = num_blocks
        self.context_features = context_features

    def __call__(self, in_features: int, out_features: int) -> nn.Module:
        """A fresh ``ResidualNet(in_features → out_features)``."""
        from nflows.nn.nets import ResidualNet

        return ResidualNet(
            in_features,
            out_features,
            hidden_features=self.hidden,
            context_features=self.context_features,
            num_blocks=self.num_blocks,
        )


class NflowsRQCoupling(_NflowsVectorFlow):
    """Neural spline flow: nflows rational-quadratic spline couplings (Durkan et al. 2019).

    ``num_layers`` ``PiecewiseRationalQuadraticCouplingTransform`` layers on alternating
    (even/odd) feature masks, with nflows' LU-decomposed linear layer ``y = L U x + b`` (``L``
    unit lower-triangular, ``U`` upper-triangular with positive diagonal) between consecutive
    couplings (``lu_linear``; ``log|det| = Σ log U_ii``; NSF §4 uses such layers). In a coupling the
    transformed half goes through a monotone rational-quadratic spline with ``num_bins`` bins on
    ``[−B, B]``, ``B = tail_bound``, whose knots and derivatives come from nflows' ``ResidualNet``
    of the other half (``hidden`` units, ``num_blocks`` blocks); in bin ``k`` with
    ``ξ = (x − x_k)/w_k``, ``s_k = h_k/w_k``:

        g(x) = y_k + h_k [s_k ξ² + δ_k ξ(1−ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)],
        g'(x) = s_k² [δ_{k+1} ξ² + 2 s_k ξ(1−ξ) + δ_k (1−ξ)²] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)]²

    (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", §3.1, eq. (4)-(5),
    after Gregory & Delbourgo 1982), and ``log|det J| = Σ log g'``. Outside ``[−B, B]`` the tails
    are linear: the identity with log-det 0 (§3.1, "linear tails"). Images are flattened; the
    latent has shape ``(D,)``, ``D ≥ 2``. ``conditional=True`` feeds one-hot labels to every
    conditioner.

    Known numerical limits of nflows 0.14 (each pinned by a strict xfail in
    ``tests/plugins/test_nflows_bridge.py``; details in ``docs/nflows-bridge.md``):

    * ``gradients`` check: when *every* transformed coordinate of a batch lies outside
      ``[−B, B]`` in some coupling, nflows skips the spline call, so that coupling's conditioner
      gets no gradient at all (``grad is None``). Harmless in training (large batches).
    * ``round-trip`` check in float32: the spline inverse's round-off is amplified by
      ``1/g'(x)``; where a bin is nearly flat (``g'`` down to ~1e-6, e.g. conditioners fed inputs
      of magnitude ≳ 10) ``inverse(forward(x))`` is off by up to ~4e-2. Fine in float64.
    * ``output-contract`` check in float32 with ``tail_bound ≥ 32``: an input *exactly* at
      ``+B`` indexes bin ``num_bins`` and raises ``RuntimeError`` (nflows' ``searchsorted`` adds
      1e-6 to the last knot, which float32 rounds away at that magnitude).

    ``test_params`` use ``tail_bound = 5`` and no LU layers: the conformance suite draws batches
    of 3 Gaussian inputs of scale ≤ 3, so a whole batch beyond ±5 has probability
    ``(2Φ(−5/3))³ ≈ 9·10⁻⁴`` per coupling at scale 3 (and ≈ 2·10⁻⁶ at scale 2), and without LU
    layers the conditioners' inputs stay below the magnitudes of the second limit. LU layers
    and the default ``tail_bound = 3`` are checked at scale 1 in the plugin's own tests. The LU
    layer's inverse calls ``torch.triangular_solve``, which torch deprecates (a ``UserWarning``);
    ``lu_linear=False`` avoids it.

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2020, "nflows: normalizing flows in PyTorch", Zenodo
      (doi:10.5281/zenodo.4296286).
    * Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", NeurIPS 2019.
    * Gregory & Delbourgo 1982, "Piecewise Rational Quadratic Interpolation to Monotonic Data", IMA Journal of
      Numerical Analysis 2(2).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 4): the number of spline couplings.
    * ``hidden`` (int ≥ 1, default 64): hidden units of each ``ResidualNet``.
    * ``num_blocks`` (int ≥ 0, default 2): residual blocks of each ``ResidualNet``.
    * ``num_bins`` (int ≥ 1, default 8): spline bins per coupling.
    * ``tail_bound`` (float > 0, default 3.0): ``B``: the splines act on ``[−B, B]``, the tails are linear.
    * ``lu_linear`` (bool, default True): an LU-decomposed linear layer between consecutive couplings.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.nflows_bridge import NflowsRQCoupling
        >>> _ = torch.manual_seed(0)
        >>> flow = NflowsRQCoupling((4,), num_layers=2, hidden=16, lu_linear=False)
        >>> x = torch.randn(8, 4)
        >>> z, logdet = flow(x)
        >>> z.shape, torch.allclose(flow.inverse(z)[0], x, atol=1e-4)
        (torch.Size([8, 4]), True)
    """

    min_channels = 2  # two halves to couple
    plugin = "nflows-rq-coupling"
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3],
        "hidden": [8],
        "num_blocks": [1],
        "num_bins": [4, 8],
        "tail_bound": [5.0],
        "lu_linear": [False],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 4,
        hidden: Annotated[int, Range(1)] = 64,
        num_blocks: Annotated[int, Range(0)] = 2,
        num_bins: Annotated[int, Range(1)] = 8,
        tail_bound: Annotated[float, Range(0, min_inclusive=False)] = 3.0,
        lu_linear: bool = True,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape, conditional, num_classes, context_features)
        from nflows.transforms import (
            CompositeTransform,
            LULinear,
            PiecewiseRationalQuadraticCouplingTransform,
        )
        from nflows.utils.torchutils import create_alternating_binary_mask

        dim = self.output_shape[0]
        factory = ResidualNetFactory(hidden, num_blocks, self.context_width)
        layers: list[nn.Module] = []
        for k in range(num_layers):
            if k and lu_linear:
                layers.append(LULinear(dim, identity_init=True))
            layers.append(
                PiecewiseRationalQuadraticCouplingTransform(
                    mask=create_alternating_binary_mask(dim, even=k % 2 == 0),
                    transform_net_create_fn=factory,
                    num_bins=num_bins,
                    tails="linear",
                    tail_bound=float(tail_bound),
                )
            )
        self._assemble(CompositeTransform(layers))


class NflowsMAF(_NflowsVectorFlow):
    """Masked autoregressive flow from nflows' MADE affine layers (Papamakarios et al. 2017).

    ``num_layers`` ``MaskedAffineAutoregressiveTransform`` layers with a ``ReversePermutation``
    between consecutive ones. Each layer computes, data → noise,

        y_i = s_i(x_{<i}) · x_i + m_i(x_{<i}),   s_i = softplus(α_i(x_{<i})) + 10⁻³,
        log|det J| = Σ_i log s_i,

    with ``(α, m)`` from one MADE pass (Germain et al. 2015, "MADE") of ``num_blocks`` masked
    residual blocks of ``hidden`` units (Papamakarios, Pavlakou & Murray 2017, "Masked
    Autoregressive Flow for Density Estimation", §3.1-3.2, eq. (3)-(5); nflows parameterises the
    scale with a softplus rather than ``exp``). The inverse is sequential: ``D`` MADE passes per
    layer. Images are flattened; the latent has shape ``(D,)``. ``conditional=True`` adds one-hot
    labels to every MADE block.

    Known numerical limit of nflows 0.14 (``round-trip`` and ``log-det`` checks on the inverse):
    the MADE outputs grow linearly with ``|x|`` and the scale has a floor of 10⁻³, so an
    untrained stack of ≥ 2 layers can expand latent-side inputs of scale ≳ 2 up to
    ``|x| ~ 1e7–1e15``; ``forward(inverse(y))`` then cancels catastrophically (even in float64).
    One layer, or latents ``y = f(x)`` of data of moderate scale, pass. ``test_params`` therefore
    draws ``num_layers = 1`` (the suite draws inputs of scale up to 3); stacks are checked at
    scale 1 in the plugin's own tests.

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2020, "nflows: normalizing flows in PyTorch", Zenodo
      (doi:10.5281/zenodo.4296286).
    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    * Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation", ICML
      2015.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 5): the number of MADE affine layers.
    * ``hidden`` (int ≥ 1, default 64): hidden units of each MADE.
    * ``num_blocks`` (int ≥ 0, default 2): masked residual blocks of each MADE.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.nflows_bridge import NflowsMAF
        >>> _ = torch.manual_seed(0)
        >>> flow = NflowsMAF((3,), num_layers=1, hidden=16)
        >>> x = torch.randn(8, 3)
        >>> z, logdet = flow(x)
        >>> x_back, inv_logdet = flow.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-4), torch.allclose(inv_logdet, -logdet, atol=1e-4)
        (True, True)
    """

    plugin = "nflows-maf"
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [1],
        "hidden": [8],
        "num_blocks": [1, 2],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 5,
        hidden: Annotated[int, Range(1)] = 64,
        num_blocks: Annotated[int, Range(0)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape, conditional, num_classes, context_features)
        from nflows.transforms import (
            CompositeTransform,
            MaskedAffineAutoregressiveTransform,
            ReversePermutation,
        )

        dim = self.output_shape[0]
        layers: list[nn.Module] = []
        for k in range(num_layers):
            if k:
                layers.append(ReversePermutation(dim))
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    features=dim,
                    hidden_features=hidden,
                    context_features=self.context_width,
                    num_blocks=num_blocks,
                )
            )
        self._assemble(CompositeTransform(layers))


class NflowsRealNVP(_NflowsVectorFlow):
    """nflows' own SimpleRealNVP transform: affine couplings, alternating masks (Dinh et al. 2017).

    ``num_layers`` ``AffineCouplingTransform`` layers on alternating (even/odd) feature masks with
    the roles swapped at every layer; the transformed half is

        y_B = s ⊙ x_B + t,   s = sigmoid(a(x_A) + 2) + 10⁻³,   log|det J| = Σ log s,

    where ``(a, t)`` come from nflows' ``ResidualNet`` of ``x_A`` (``hidden`` units,
    ``num_blocks`` blocks) (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real
    NVP", §3.3-3.4, eq. (7)-(9); nflows bounds the scale with a sigmoid instead of ``exp``). This
    is exactly ``nflows.flows.realnvp.SimpleRealNVP(...)._transform``, the nflows baseline to
    compare flowkit's ``realnvp`` with. ``batch_norm=True`` adds nflows' ``BatchNorm`` between
    layers (§3.7); it is off by default because in train mode it normalises with the batch's
    statistics (examples interact) and nflows cannot invert it there (inverse only in eval mode):
    with ``batch_norm=True`` the ``state-dict`` check, which runs both directions in train mode,
    fails; every other check passes in eval mode.
    Images are flattened; the latent has shape ``(D,)``, ``D ≥ 2``. Not conditional: nflows'
    ``SimpleRealNVP`` takes no context.

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2020, "nflows: normalizing flows in PyTorch", Zenodo
      (doi:10.5281/zenodo.4296286).
    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 4): the number of affine couplings.
    * ``hidden`` (int ≥ 1, default 64): hidden units of each ``ResidualNet``.
    * ``num_blocks`` (int ≥ 1, default 2): residual blocks of each ``ResidualNet``.
    * ``batch_norm`` (bool, default False): nflows' ``BatchNorm`` between the couplings (invertible in eval
      mode only).

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.nflows_bridge import NflowsRealNVP
        >>> _ = torch.manual_seed(0)
        >>> flow = NflowsRealNVP((4,), num_layers=2, hidden=16)
        >>> x = torch.randn(8, 4)
        >>> z, logdet = flow(x)
        >>> z.shape, torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        (torch.Size([8, 4]), True)
    """

    min_channels = 2  # two halves to couple
    plugin = "nflows-realnvp"
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3],
        "hidden": [8],
        "num_blocks": [1, 2],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 4,
        hidden: Annotated[int, Range(1)] = 64,
        num_blocks: Annotated[int, Range(1)] = 2,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(event_shape, False, None, None)
        from nflows.flows.realnvp import SimpleRealNVP

        flow = SimpleRealNVP(
            features=self.output_shape[0],
            hidden_features=hidden,
            num_layers=num_layers,
            num_blocks_per_layer=num_blocks,
            batch_norm_between_layers=batch_norm,
        )
        self._assemble(flow._transform)
