"""The :class:`Flow` model — ``prior ∘ transform`` with preprocessing.

For data ``x``, preprocessing ``g`` (e.g. logit) and transform ``f``::

    z = f(g(x)),   log p(x) = log p_Z(z) + log|det J_f(g(x))| + log|det J_g(x)|

so :meth:`Flow.log_prob` is the density of the data in its own space, and
:meth:`Flow.bits_per_dim` is comparable with published numbers.

A conditional flow ``p(x | c)`` reads a real-valued context ``c`` through its embedding network
``h = E(standardize(c))``, computed once per call and passed to every conditioner and to a
context-aware prior; class labels are passed on as they are. ``flow(c)`` is the model as a
:class:`torch.distributions.Distribution` (:class:`~flowkit.distribution.FlowDistribution`).

A config becomes a :class:`Flow` in :func:`flowkit.builder.build_model` (also
``flowkit.build_model``); ``flowkit.model.build_model`` still works for one release, with a
:class:`DeprecationWarning`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flowkit.config import Temperature
from flowkit.data.base import DataMeta
from flowkit.embedding import ContextStandardize, Embedding
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import check_constraints
from flowkit.prior import Prior
from flowkit.transform import Shape, Transform

if TYPE_CHECKING:
    from flowkit.distribution import FlowDistribution

__all__ = ["DataMeta", "Flow", "NonFiniteSamplesWarning"]


class NonFiniteSamplesWarning(RuntimeWarning):
    """Samples decoded from the prior hold NaN or inf: the transform's inverse overflowed.

    :meth:`Flow.sample` and :meth:`Flow.sample_and_log_prob` warn with the share of such samples
    and return them as NaN (never clamped into the data's domain, where they would look valid).
    ``warnings.simplefilter("error", NonFiniteSamplesWarning)`` makes it an error.
    """


def _report_nonfinite(x: Tensor, where: str) -> None:
    """Warn (:class:`NonFiniteSamplesWarning`) with the share of samples of ``x`` holding NaN/inf."""
    finite = torch.isfinite(x.reshape(x.shape[0], math.prod(x.shape[1:]))).all(1)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    warnings.warn(
        f"{where}: {bad} of {x.shape[0]} samples ({100 * bad / x.shape[0]:.1f}%) hold NaN or inf: "
        f"the transform's inverse overflowed on these prior draws; they are returned as NaN, not "
        f"clamped. Check the model (flowkit check NAME runs the prior-inverse check) or sample "
        f"at a lower temperature",
        NonFiniteSamplesWarning,
        stacklevel=3,
    )


def _check_count(n: Any, where: str) -> None:
    """The number of samples of a call: a whole number ≥ 0, else a :class:`ConfigError`."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ConfigError(f"{where}: n must be a whole number ≥ 0 (the number of samples), got {n!r}")


class Flow(nn.Module):
    """A normalizing flow: preprocessing, an invertible transform and a prior.

    ``encode`` maps data to latents, ``decode`` maps latents back, ``log_prob`` is the exact
    log-density by change of variables, ``sample`` decodes prior samples, and ``flow(context)``
    is the conditional distribution ``p(x | context)`` as a ``torch.distributions`` object.
    ``context`` is the class label tensor (shape ``(B,)``) for class-conditional models, a float
    tensor ``(B, *context_shape)`` for a model with an ``embedding`` (real-valued context), else
    ``None``.
    """

    #: the resolved config of a flow built by :func:`flowkit.flows.build` (unset otherwise)
    config: dict[str, Any]

    def __init__(
        self,
        transform: Transform,
        prior: Prior,
        preprocess: Transform,
        levels: int | None = None,
        num_classes: int | None = None,
        embedding: Embedding | None = None,
        context_norm: ContextStandardize | None = None,
    ) -> None:
        super().__init__()
        if preprocess.output_shape != transform.event_shape:
            raise ShapeError(
                f"the transform takes {transform.event_shape} but the data is {preprocess.output_shape}"
            )
        if prior.shape != transform.output_shape:
            raise ShapeError(
                f"the prior has shape {prior.shape} but the transform outputs {transform.output_shape}"
            )
        self.preprocess = preprocess
        self.transform = transform
        self.prior = prior
        self.levels = levels
        self.num_classes = num_classes
        self.embedding = embedding
        self.context_norm = context_norm

    # -- shapes and placement ------------------------------------------------------------------
    @property
    def event_shape(self) -> Shape:
        """Per-example data shape."""
        return self.preprocess.event_shape

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def exact_density(self) -> bool:
        """``False`` when the transform changes the dimension (e.g. a GRN that zero-pads MNIST to
        32×32): :meth:`log_prob` is then the latent density at the embedded point, not a density
        of the data, and bits/dim from it do not compare with published numbers."""
        return math.prod(self.transform.output_shape) == math.prod(self.transform.event_shape)

    @property
    def device(self) -> torch.device:
        return self.prior.device

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ShapeError(
                f"the model takes data of shape (batch, {', '.join(map(str, self.event_shape))}) "
                f"but got {tuple(x.shape)}"
            )

    # -- the context ---------------------------------------------------------------------------
    @property
    def context_shape(self) -> Shape | None:
        """Per-example shape of the real-valued context (``None``: labels or no context)."""
        return None if self.embedding is None else self.embedding.context_shape

    def embed_context(self, context: Tensor | None, batch: int | None = None) -> Tensor | None:
        """What the transform and prior read: ``E(standardize(c))`` for a real-valued context.

        Class labels and ``None`` pass unchanged (labels are read by the blocks themselves). A
        float context given to a model without a real-valued context, or a missing or
        malformed one for a model with it, is a :class:`ShapeError`; ``batch`` is the batch
        size the context must have.
        """
        if self.embedding is None:
            if context is not None and context.is_floating_point():
                raise ShapeError(
                    f"this model has no real-valued context, but got a float context of shape "
                    f"{tuple(context.shape)}; pass context=None"
                    + (" or class labels (a LongTensor)" if self.num_classes else "")
                    + ", or build the model for a dataset with a context"
                )
            return context
        if context is None:
            shape = ", ".join(map(str, self.embedding.context_shape))
            raise ShapeError(
                f"this model is conditional on a real-valued context: pass a float "
                f"tensor of shape (batch, {shape})"
            )
        self.embedding.check_context(context)
        if batch is not None and context.shape[0] != batch:
            raise ShapeError(
                f"the context has batch size {context.shape[0]} but the data has "
                f"{batch}; give one context per example"
            )
        context = context.to(device=self.device, dtype=self.prior.dtype)
        if self.context_norm is not None:
            context = self.context_norm(context)
        return self.embedding(context)

    # -- the model -----------------------------------------------------------------------------
    def _encode(self, x: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        w, ld_pre = self.preprocess(x, h)
        z, ld = self.transform(w, h)
        return z, ld + ld_pre

    def _decode(self, z: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """``z → (x, log|det ∂x/∂z|)`` given the embedded context ``h``."""
        w, ld = self.transform.inverse(z, h)
        x, ld_pre = self.preprocess.inverse(w, h)
        return x, ld + ld_pre

    def encode(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x → (z, log|det ∂z/∂x|)``, preprocessing included."""
        self._check(x)
        return self._encode(x, self.embed_context(context, x.shape[0]))

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``z → x``: the exact inverse of :meth:`encode`."""
        return self._decode(z, self.embed_context(context, z.shape[0]))[0]

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact ``log p(x | context)`` per example (nats), shape ``(B,)``."""
        self._check(x)
        h = self.embed_context(context, x.shape[0])
        z, logdet = self._encode(x, h)
        return self.prior.log_prob(z, h) + logdet

    def sample_and_log_prob(
        self,
        n: int,
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """``n`` reparameterised samples and their exact ``log p(x | context)`` in one pass.

        ``log p(x) = log p_Z(z) − log|det ∂x/∂z|`` with ``x = decode(z)``: the inverse pass's
        log-determinant, no second pass through the flow. Samples are not clamped to the data's
        domain (a clamp would change their density). With ``temperature ≠ 1`` the samples come
        from the tempered prior but the log-density is still that of the model.
        """
        _check_count(n, "Flow.sample_and_log_prob")
        check_constraints(temperature, Temperature, "Flow.sample_and_log_prob: temperature", 1.0)
        if context is None:
            context = self.default_context(n)
        h = self.embed_context(context, n if context is not None else None)
        z = self.prior.sample(n, h, temperature=temperature)
        x, logdet = self._decode(z, h)
        _report_nonfinite(x, "Flow.sample_and_log_prob")
        return x, self.prior.log_prob(z, h) - logdet

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The model as a distribution: ``flow(c)`` is ``p(x | c)``, ``flow()`` is ``p(x)``.

        A :class:`~flowkit.distribution.FlowDistribution` (a ``torch.distributions``
        ``Distribution`` with ``log_prob``, ``sample``, ``rsample`` and
        ``rsample_and_log_prob``); its batch shape is the context's.
        """
        from flowkit.distribution import FlowDistribution

        return FlowDistribution(self, context)

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(−log p(x)/D + log L) / log 2`` per example, ``L`` the number of quantization levels.

        For dequantized data this is the usual upper bound on the discrete negative
        log-likelihood in bits per dimension (Theis et al. 2016, "A note on the evaluation of
        generative models", §3.1). Without levels it is ``−log₂ p(x) / D``.
        """
        nll = -self.log_prob(x, context) / self.dim
        if self.levels:
            nll = nll + math.log(self.levels)
        return nll / math.log(2.0)

    def default_context(self, n: int) -> Tensor | None:
        """Labels ``0, 1, …, K−1, 0, …`` for class-conditional models, else ``None``.

        A model is class-conditional when its prior is, or when one of its blocks reads class
        labels (a conditional coupling with an unconditional prior).
        """
        num_classes = self.num_classes
        if self.class_conditional and num_classes:  # class_conditional implies num_classes
            return torch.arange(n, device=self.device) % num_classes
        return None

    @property
    def class_conditional(self) -> bool:
        """Whether the prior or a block of the transform reads class labels."""
        return bool(self.num_classes) and (
            self.prior.conditional
            or any(
                getattr(getattr(m, "context_spec", None), "kind", None) == "labels"
                for m in self.transform.modules()
            )
        )

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` samples ``decode(z)``, ``z ~ p_Z``, clamped to the data's domain (``[0, 1]`` for
        images); class-conditional models cycle through the classes when ``context`` is None.
        A model with a real-valued context needs ``context`` of shape ``(n, *context_shape)``.
        ``n`` must be a whole number ≥ 0 and ``temperature`` a finite number > 0
        (:class:`ConfigError` otherwise). Samples
        holding NaN or inf (an overflowing inverse) are returned as NaN, not clamped, with a
        :class:`NonFiniteSamplesWarning` giving their share."""
        _check_count(n, "Flow.sample")
        check_constraints(temperature, Temperature, "Flow.sample: temperature", 1.0)
        if context is None:
            context = self.default_context(n)
        h = self.embed_context(context, n if context is not None else None)
        z = self.prior.sample(n, h, temperature=temperature)
        x = self._decode(z, h)[0]
        _report_nonfinite(x, "Flow.sample")
        domain = getattr(self.preprocess, "domain", None)
        if domain is None:
            return x
        # ±inf stays non-finite (NaN): a clamp would turn an overflow into a valid-looking pixel
        return torch.where(torch.isfinite(x), x.clamp(*domain), x.new_full((), math.nan))

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation before training, from the untrained network's outputs.

        Runs one forward pass (transforms with lazy data-dependent init, e.g. actnorm, initialise
        there) and then hands the latents to the prior's init hook if it has one.
        """
        h = self.embed_context(context, x.shape[0])
        z, _ = self._encode(x, h)
        if not bool(self.prior.initialized):
            self.prior.initialize(z, h)


def __getattr__(name: str) -> Any:
    """``flowkit.model.build_model``: moved to :mod:`flowkit.builder` (kept for one release)."""
    if name == "build_model":
        import warnings

        warnings.warn(
            "flowkit.model.build_model moved to flowkit.builder.build_model (also "
            "flowkit.build_model); the old import path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        from flowkit.builder import build_model

        return build_model
    raise AttributeError(f"module 'flowkit.model' has no attribute {name!r}")
