"""The conformance checks of :mod:`flowkit.testing` catch the bugs they are meant to catch.

Each deliberately broken toy transform below has exactly one defect, and the check responsible
for it must fail with a message naming the check; the correct toys (and compositions of them
built with the core's ``Sequential``, ``Inverse``, ``MultiScale`` and ``Flatten``) pass.
Toys live at module level so that pickling them works.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from flowkit import testing
from flowkit.composition import Flatten, Inverse, MultiScale, Reshape, Sequential
from flowkit.errors import ConfigError, ShapeError
from flowkit.registry import transforms
from flowkit.testing import (
    CheckResult,
    check_plugin,
    check_transform,
    example_params,
    example_shapes,
    params_for,
    perturb_parameters,
    run_checks,
    shapes_for,
)
from flowkit.transform import Shape, Transform, sum_except_batch

# ---------------------------------------------------------------------------------------------
# correct toys
# ---------------------------------------------------------------------------------------------


class ToyAffine(Transform):
    """Elementwise affine map ``y = x·exp(s) + b`` (plus a per-class shift when conditional).

    ``log|det J| = Σ s``. Parameters start at zero, so a fresh instance is the identity.
    """

    logdet_sign: ClassVar[float] = 1.0
    test_params: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, event_shape: Shape, *, num_classes: int | None = None, conditional: bool = False
    ) -> None:
        super().__init__(event_shape)
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.shift = nn.Parameter(torch.zeros(self.event_shape))
        self.embedding: nn.Embedding | None = None
        if conditional:
            if num_classes is None:
                raise ConfigError("conditional=True needs labelled data (num_classes)")
            self.embedding = nn.Embedding(num_classes, self.event_dim)

    def _shift(self, context: Tensor | None) -> Tensor:
        if self.embedding is None:
            return self.shift
        if context is None:
            raise ShapeError("this transform is conditional: pass the labels as context")
        return self.shift + self.embedding(context).reshape(-1, *self.event_shape)

    def _logdet(self, x: Tensor) -> Tensor:
        return sum_except_batch(self.log_scale.expand_as(x))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        y = x * self.log_scale.exp() + self._shift(context)
        return y, self.logdet_sign * self._logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        x = (y - self._shift(context)) * torch.exp(-self.log_scale)
        return x, -self.logdet_sign * self._logdet(y)


class ToyActNorm(Transform):
    """Data-initialised elementwise normalisation ``y = (x − μ)·exp(−σ)``; its flag is a buffer."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.register_buffer("initialized", torch.tensor(False))

    def _initialize(self, x: Tensor) -> None:
        with torch.no_grad():
            self.loc.copy_(x.mean(dim=0))
            self.log_scale.copy_(x.std(dim=0).clamp_min(1e-3).log())
        self._mark_initialized()

    def _is_initialized(self) -> bool:
        return bool(self.initialized)

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        if not self._is_initialized():
            self._initialize(x)
        y = (x - self.loc) * torch.exp(-self.log_scale)
        return y, -sum_except_batch(self.log_scale.expand_as(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        x = y * self.log_scale.exp() + self.loc
        return x, sum_except_batch(self.log_scale.expand_as(y))


class ToyPermutation(Transform):
    """Fixed random permutation of the features, kept in a buffer (volume preserving)."""

    volume_preserving = True
    input_ranks = (1,)

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.register_buffer("perm", torch.randperm(self.event_dim))

    def _inverse_perm(self) -> Tensor:
        return torch.argsort(self._perm())

    def _perm(self) -> Tensor:
        return self.perm

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return x[:, self._perm()], self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        return y[:, self._inverse_perm()], self.zero_logdet(y)


def toy_stack(
    event_shape: Shape, *, depth: int = 2, num_classes: int | None = None, conditional: bool = False
) -> Sequential:
    """ActNorm, then ``depth`` affine layers alternating with their ``Inverse``."""
    steps: list[Transform] = [ToyActNorm(event_shape)]
    for i in range(depth):
        layer = ToyAffine(event_shape, num_classes=num_classes, conditional=conditional)
        steps.append(Inverse(layer) if i % 2 else layer)
    return Sequential(steps)


def toy_multiscale(event_shape: Shape) -> MultiScale:
    """Two-level multi-scale flow of affine layers (images with at least 2 channels)."""
    c, h, w = event_shape
    return MultiScale([ToyAffine((c, h, w)), ToyAffine((c - c // 2, h, w))])


def toy_flatten_then_permute(event_shape: Shape) -> Sequential:
    """Flatten an image, then permute its pixels (output shape differs from input shape)."""
    flat = Flatten(event_shape)
    return Sequential([flat, ToyPermutation(flat.output_shape)])


# ---------------------------------------------------------------------------------------------
# broken toys: one defect each
# ---------------------------------------------------------------------------------------------


class SignFlipAffine(ToyAffine):
    """Returns ``−log|det J|`` forward and ``+`` inverse: the two still cancel."""

    logdet_sign = -1.0


class WrongInverseAffine(ToyAffine):
    """Inverse multiplies by ``exp(s)`` instead of ``exp(−s)``."""

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (y - self._shift(context)) * torch.exp(self.log_scale)
        return x, -self._logdet(y)


class Float32AccumulatorAffine(ToyAffine):
    """Accumulates the log-det in ``torch.zeros(batch)``: float32 on the CPU whatever the input."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = super().forward(x, context)
        total = torch.zeros(x.shape[0])
        total += logdet
        return y, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = super().inverse(y, context)
        total = torch.zeros(y.shape[0])
        total += logdet
        return x, total


class DeviceBlindShift(ToyAffine):
    """Volume-preserving shift whose zero log-det is made with the right dtype on the CPU."""

    volume_preserving = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x + self.shift + 0 * self.log_scale, torch.zeros(x.shape[0], dtype=x.dtype)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y - self.shift, torch.zeros(y.shape[0], dtype=y.dtype)


class ForgetfulActNorm(ToyActNorm):
    """Keeps its "initialised" flag in a Python bool, which ``state_dict`` does not save."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.done = False

    def _is_initialized(self) -> bool:
        return self.done

    def _mark_initialized(self) -> None:
        self.done = True


class UnsavedPermutation(ToyPermutation):
    """Keeps its permutation in a plain attribute: a reloaded instance permutes differently."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.plain_perm = torch.randperm(self.event_dim)

    def _perm(self) -> Tensor:
        return self.plain_perm


class LambdaAffine(ToyAffine):
    """Stores a lambda as an attribute, so the module cannot be pickled."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.post = lambda t: t  # the defect under test

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = super().forward(x, context)
        return self.post(y), logdet


class DeafAffine(ToyAffine):
    """Accepts ``conditional=True`` but ignores the labels."""

    def __init__(
        self, event_shape: Shape, *, num_classes: int | None = None, conditional: bool = False
    ) -> None:
        super().__init__(event_shape, num_classes=num_classes, conditional=False)


class UnusedParameterAffine(ToyAffine):
    """Holds a parameter that ``forward`` never uses."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.orphan = nn.Parameter(torch.zeros(3))


class FalselyVolumePreserving(ToyAffine):
    """Claims ``volume_preserving = True`` but has a non-zero log-det."""

    volume_preserving = True


class BadLogdetShape(ToyAffine):
    """Returns the log-det with shape ``(B, 1)`` instead of ``(B,)``."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = super().forward(x, context)
        return y, logdet[:, None]


class BatchMixing(Transform):
    """``y = x + mean_batch(x)``: invertible for the batch, but examples interact."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x + x.mean(dim=0, keepdim=True), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y - y.mean(dim=0, keepdim=True) / 2, self.zero_logdet(y)


# ---------------------------------------------------------------------------------------------
# toys with a real-valued context (B, k): one correct, and one defect each
# ---------------------------------------------------------------------------------------------


class ContextAffine(Transform):
    """Elementwise ``y = x·exp(s(c)) + t(c)``; ``s``, ``t`` come from a linear layer of the context.

    ``s(c) = s₀ + W_s c`` and ``t(c) = t₀ + W_t c`` per scalar, so ``log|det J| = Σ s(c)``.
    Without ``context_features`` it is a plain elementwise affine map. The linear layer starts at
    zero (the usual identity initialisation of conditioners), so a fresh instance ignores ``c``.
    """

    def __init__(
        self, event_shape: Shape, *, context_features: int | None = None, conditional: bool | None = None
    ) -> None:
        super().__init__(event_shape)
        self.context_features = context_features if conditional is not False else None
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.shift = nn.Parameter(torch.zeros(self.event_shape))
        self.net: nn.Linear | None = None
        if self.context_features is not None:
            self.net = nn.Linear(self.context_features, 2 * self.event_dim)
            nn.init.zeros_(self.net.weight)
            nn.init.zeros_(self.net.bias)

    def _context(self, context: Tensor | None, like: Tensor) -> Tensor:
        k, batch = self.context_features, like.shape[0]
        if context is None or not context.is_floating_point() or tuple(context.shape) != (batch, k):
            got = None if context is None else f"{context.dtype} {tuple(context.shape)}"
            raise ShapeError(
                f"{type(self).__name__} needs a float context of shape ({batch}, {k}), got {got}"
            )
        return context

    def _coefficients(self, like: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(s, t)``, each ``(B, *event_shape)`` (or unbatched without a context)."""
        if self.net is None:
            return self.log_scale, self.shift
        s, t = self.net(self._context(context, like)).chunk(2, dim=1)
        shape = (like.shape[0], *self.event_shape)
        return self.log_scale + s.reshape(shape), self.shift + t.reshape(shape)

    def _logdet(self, s: Tensor, like: Tensor) -> Tensor:
        return sum_except_batch(s.expand_as(like))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        s, t = self._coefficients(x, context)
        return x * s.exp() + t, self._logdet(s, x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        s, t = self._coefficients(y, context)
        return (y - t) * torch.exp(-s), -self._logdet(s, y)


class ContextBlindAffine(ContextAffine):
    """Declares ``context_features`` and validates the context, but never reads its values."""

    def __init__(
        self, event_shape: Shape, *, context_features: int | None = None, conditional: bool | None = None
    ) -> None:
        super().__init__(event_shape)  # no conditioner at all
        self.context_features = context_features

    def _coefficients(self, like: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_features is not None:
            self._context(context, like)
        return self.log_scale, self.shift


class ContextFreeLogdetAffine(ContextAffine):
    """Scales by ``exp(s(c))`` but reports ``Σ s₀``: the log-det misses the context's share."""

    def _logdet(self, s: Tensor, like: Tensor) -> Tensor:
        return sum_except_batch(self.log_scale.expand_as(like))


class UncheckedContextAffine(ContextAffine):
    """Feeds whatever context it gets to the linear layer: a bad one fails deep inside torch."""

    def _context(self, context: Tensor | None, like: Tensor) -> Tensor:
        return context  # type: ignore[return-value]


class TruncatingContextAffine(ContextAffine):
    """Reads the first ``k`` columns of any context: a too-wide one is silently accepted."""

    def _context(self, context: Tensor | None, like: Tensor) -> Tensor:
        k = self.context_features
        if context is None or context.shape[0] != like.shape[0]:
            raise ShapeError(f"needs a context of shape ({like.shape[0]}, {k})")
        return context[:, :k].to(like.dtype)


class LabelsAndContextAffine(ContextAffine):
    """Takes class labels (``num_classes``) or a real-valued context (``context_features``)."""

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_classes: int | None = None,
        conditional: bool | None = None,
        context_features: int | None = None,
    ) -> None:
        vector = context_features is not None
        super().__init__(
            event_shape, context_features=context_features if vector else None, conditional=conditional
        )
        self.embedding: nn.Embedding | None = None
        if conditional and not vector:
            if num_classes is None:
                raise ConfigError("conditional=True needs num_classes or context_features")
            self.embedding = nn.Embedding(num_classes, 2 * self.event_dim)

    def _coefficients(self, like: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.embedding is None:
            return super()._coefficients(like, context)
        if context is None or context.is_floating_point():
            raise ShapeError("this transform is conditional: pass the labels as context")
        s, t = self.embedding(context).chunk(2, dim=1)
        shape = (like.shape[0], *self.event_shape)
        return self.log_scale + s.reshape(shape), self.shift + t.reshape(shape)


# ---------------------------------------------------------------------------------------------
# correct transforms pass
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_toy_affine_passes(shape: Shape) -> None:
    check_transform(ToyAffine, shape)


def test_toy_affine_conditional_passes() -> None:
    check_transform(ToyAffine, (4,), {"conditional": True}, num_classes=3)


@pytest.mark.parametrize(
    "factory, shape, params",
    [
        (ToyActNorm, (6,), {}),
        (ToyActNorm, (2, 2, 3), {}),
        (ToyPermutation, (7,), {}),
        (toy_stack, (5,), {"depth": 3}),
        (toy_stack, (2, 2, 2), {}),
        (toy_multiscale, (3, 2, 2), {}),
        (toy_flatten_then_permute, (2, 2, 3), {}),
        (Flatten, (2, 3, 2), {}),
        (Reshape, (2, 3, 2), {"output_shape": (3, 4)}),
    ],
)
def test_correct_toys_and_core_compositions_pass(factory: Any, shape: Shape, params: dict[str, Any]) -> None:
    check_transform(factory, shape, params, seed=3, input_scale=2.0)


def test_conditional_stack_passes_with_given_labels() -> None:
    labels = torch.tensor([0, 2, 1, 1])
    check_transform(toy_stack, (4,), {"conditional": True}, num_classes=3, context=labels, batch_size=4)


def test_check_transform_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_transform(toy_stack, (4,))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# broken transforms are caught by the responsible check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, shape, pattern",
    [
        (SignFlipAffine, (4,), r"\[SignFlipAffine\] log-det check failed .*sign is flipped"),
        (SignFlipAffine, (1, 2, 2), r"log-det check failed .*autograd"),
        (WrongInverseAffine, (4,), r"round-trip check failed .*inverse\(forward\(x\)\) vs x"),
        (Float32AccumulatorAffine, (4,), r"output-contract check failed .*float64.*dtype"),
        (ForgetfulActNorm, (4,), r"state-dict check failed .*load_state_dict.*register_buffer"),
        (UnsavedPermutation, (6,), r"state-dict check failed .*output differs"),
        (LambdaAffine, (4,), r"pickle check failed .*lambda"),
        (UnusedParameterAffine, (4,), r"gradients check failed .*orphan"),
        (FalselyVolumePreserving, (4,), r"log-det check failed .*not exactly zero"),
        (BadLogdetShape, (4,), r"output-contract check failed .*logabsdet has shape \(3, 1\)"),
        (BatchMixing, (4,), r"log-det check failed .*examples must not interact"),
    ],
)
def test_broken_transform_is_caught(factory: Any, shape: Shape, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        check_transform(factory, shape)


def test_labels_that_are_ignored_are_caught() -> None:
    with pytest.raises(AssertionError, match=r"context check failed .*do not depend on the labels"):
        check_transform(DeafAffine, (4,), {"conditional": True}, num_classes=3)


def test_sign_error_is_invisible_without_perturbation() -> None:
    """Zero-initialised parameters make the flipped sign harmless: perturbation is essential."""
    check_transform(SignFlipAffine, (4,), perturbation=0.0)


def test_message_gives_error_and_tolerance() -> None:
    with pytest.raises(AssertionError) as info:
        check_transform(SignFlipAffine, (3,), jacobian_atol=1e-7)
    message = str(info.value)
    assert "input shape (3, 3)" in message
    assert "float64" in message
    assert "> tolerance" in message and "atol 1.0e-07" in message


def _prepared(cls: type[Transform], shape: Shape) -> tuple[Transform, Tensor]:
    module = cls(shape)
    gen = torch.Generator().manual_seed(0)
    perturb_parameters(module, generator=gen)
    return module, torch.randn(3, *shape, generator=gen)


def test_individual_checks_can_be_called_directly() -> None:
    module, x = _prepared(ToyAffine, (4,))
    testing.check_output_contract(module, x)
    testing.check_round_trip(module, x)
    testing.check_logdet(module, x)
    testing.check_state_dict(module, lambda: ToyAffine((4,)), x)
    testing.check_dtype_device(module, x)
    testing.check_gradients(module, x)
    testing.check_pickle(module, x)

    broken, x = _prepared(SignFlipAffine, (4,))
    testing.check_round_trip(broken, x)  # the log-dets still cancel ...
    with pytest.raises(AssertionError, match="log-det"):
        testing.check_logdet(broken, x)  # ... but the Jacobian disagrees

    wrong_dtype, x = _prepared(Float32AccumulatorAffine, (4,))
    with pytest.raises(AssertionError, match=r"output-contract check failed .*float64"):
        testing.check_output_contract(wrong_dtype, x)
    with pytest.raises(AssertionError, match=r"dtype-device check failed .*dtype torch.float32"):
        testing.check_dtype_device(wrong_dtype, x)

    lam, x = _prepared(LambdaAffine, (4,))
    with pytest.raises(AssertionError, match=r"pickle\.dumps"):
        testing.check_pickle(lam, x)


def test_device_follow_through_without_a_gpu() -> None:
    module, x = _prepared(ToyAffine, (2, 2, 2))
    testing.check_dtype_device(module, x, devices=["cpu", "cpu"])  # compares across devices
    testing.check_dtype_device(module, x, devices=["cpu", "meta"])
    cpu_bound, x = _prepared(DeviceBlindShift, (4,))
    check_transform(DeviceBlindShift, (4,))  # passes when everything runs on the CPU
    with pytest.raises(
        AssertionError,
        match=r"dtype-device check failed .*\(float32, meta\).*"
        r"logabsdet is on cpu",
    ):
        testing.check_dtype_device(cpu_bound, x, devices=["cpu", "meta"])


def test_check_plugin_and_run_checks_use_the_registry() -> None:
    transforms.register("toy-affine-for-tests", ToyAffine)
    transforms.register("toy-signflip-for-tests", SignFlipAffine)
    try:
        check_plugin("toy-affine-for-tests", (3,))

        results = run_checks("toy-affine-for-tests")
        assert all(isinstance(r, CheckResult) for r in results)
        assert all(r.passed for r in results), [r.message for r in results if not r.passed]
        shapes = {r.shape for r in results}
        assert shapes == set(example_shapes(ToyAffine))
        assert {r.conditional for r in results} == {False, True}  # it takes `conditional`
        assert {r.context_features for r in results} == {None}  # but not `context_features`
        assert {r.check for r in results if r.conditional} == set(testing.CHECKS) - {"context-shape"}
        assert {r.check for r in results if not r.conditional} == set(testing.CHECKS) - {
            "context",
            "context-shape",
        }

        failed = run_checks("toy-signflip-for-tests", shapes=[(4,)], conditional=False)
        by_check = {r.check: r for r in failed}
        assert not by_check["log-det"].passed
        assert "sign is flipped" in by_check["log-det"].message
        assert by_check["round-trip"].passed and by_check["pickle"].passed

        unbuildable = run_checks("toy-affine-for-tests", shapes=[(4,)], conditional=True, num_classes=1)
        assert [(r.check, r.passed) for r in unbuildable] == [("build", False)]
    finally:
        transforms.unregister("toy-affine-for-tests")
        transforms.unregister("toy-signflip-for-tests")


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'hiden'"):
        check_transform(toy_stack, (4,), {"hiden": 3})
    with pytest.raises(ConfigError, match="must be an integer"):
        check_transform(toy_stack, (4,), {"depth": "two"})
    with pytest.raises(ValueError, match="num_classes"):
        check_transform(ToyAffine, (4,), {"conditional": True})


def test_build_failure_is_reported() -> None:
    with pytest.raises(AssertionError, match=r"\[toy_multiscale\] build failed .*\(4,\).*unpack"):
        check_transform(toy_multiscale, (4,))


# ---------------------------------------------------------------------------------------------
# transforms with a real-valued context
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, k", [((4,), 2), ((1,), 1), ((2, 3, 3), 4)])
def test_context_affine_passes(shape: Shape, k: int) -> None:
    check_transform(ContextAffine, shape, context_features=k, seed=2, input_scale=1.5)


def test_context_affine_passes_with_a_given_context() -> None:
    context = torch.tensor([[0.0, -2.5], [3.0, 0.5], [1.0, 1.0], [-0.1, 2.0]])
    check_transform(ContextAffine, (3,), context_features=2, context=context, batch_size=4)


@given(data=st.data())
def test_context_affine_passes_on_drawn_contexts(data: st.DataObject) -> None:
    k = data.draw(testing.context_features_for(), label="context_features")
    context = data.draw(testing.contexts(3, k), label="context")
    check_transform(ContextAffine, (3,), context_features=k, context=context)


def test_context_is_drawn_finite_moderate_and_float() -> None:
    @given(k=testing.context_features_for(), data=st.data())
    def drawn(k: int, data: st.DataObject) -> None:
        assert 1 <= k <= testing.MAX_CONTEXT_FEATURES
        context = data.draw(testing.contexts(5, k))
        assert context.shape == (5, k) and context.dtype == torch.float32
        assert torch.isfinite(context).all() and context.abs().max() <= 3.0

    drawn()


def test_a_context_that_is_ignored_is_caught() -> None:
    with pytest.raises(
        AssertionError,
        match=r"\[ContextBlindAffine\] context check failed .*"
        r"do not depend on the context.*ignores its context",
    ):
        check_transform(ContextBlindAffine, (4,), context_features=2)
    check_transform(ContextBlindAffine, (4,))  # fine as an unconditional transform


def test_a_logdet_that_forgets_the_context_is_caught() -> None:
    with pytest.raises(
        AssertionError,
        match=r"\[ContextFreeLogdetAffine\] log-det check failed "
        r"for input shape \(3, 4\) \(float64.*slogdet",
    ):
        check_transform(ContextFreeLogdetAffine, (4,), context_features=2)
    check_transform(ContextFreeLogdetAffine, (4,))  # right without a context: the context matters


@pytest.mark.parametrize(
    "cls, pattern",
    [
        (UncheckedContextAffine, r"forward with no context \(None\) raised TypeError.*ShapeError"),
        (TruncatingContextAffine, r"forward with a context of width 3 instead of 2 returned normally"),
    ],
)
def test_a_bad_context_must_raise_a_shape_error(cls: type[Transform], pattern: str) -> None:
    with pytest.raises(AssertionError, match=rf"context-shape check failed .*{pattern}"):
        check_transform(cls, (4,), context_features=2)


def test_the_context_check_needs_perturbed_parameters() -> None:
    """A zero-initialised conditioner ignores any context: perturbation is what makes it speak."""
    with pytest.raises(AssertionError, match="do not depend on the context"):
        check_transform(ContextAffine, (4,), context_features=2, perturbation=0.0)


def test_context_checks_can_be_called_directly() -> None:
    module = ContextAffine((4,), context_features=3)
    gen = torch.Generator().manual_seed(0)
    perturb_parameters(module, generator=gen)
    x, context = torch.randn(3, 4, generator=gen), torch.randn(3, 3, generator=gen)
    testing.check_output_contract(module, x, context=context)
    testing.check_round_trip(module, x, context=context)
    testing.check_logdet(module, x, context=context)  # float32 context, float64 Jacobian
    testing.check_state_dict(module, lambda: ContextAffine((4,), context_features=3), x, context=context)
    testing.check_dtype_device(module, x, context, devices=["cpu", "meta"])
    testing.check_gradients(module, x, context)
    testing.check_pickle(module, x, context)
    testing.check_context(module, x, context)  # no num_classes for a real-valued context
    testing.check_context_shape(module, x, context)
    with pytest.raises(AssertionError, match="round-trip check failed"):  # another context
        testing.check_round_trip(_MismatchedContext(module), x, context=context)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        testing.check_context(module, x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="float context"):
        testing.check_context_shape(module, x, torch.tensor([0, 1, 0]))


class _MismatchedContext(Transform):
    """Wraps a conditional transform but inverts with the context shifted (a test double)."""

    def __init__(self, inner: Transform) -> None:
        super().__init__(inner.event_shape)
        self.inner = inner

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.inner(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        assert context is not None
        return self.inner.inverse(y, context + 0.5)


def test_supports_context_reads_the_signature() -> None:
    assert testing.supports_context(ContextAffine)
    assert testing.supports_context(LabelsAndContextAffine)
    assert not testing.supports_context(ToyAffine)
    assert not testing.supports_context(toy_stack)
    # `conditional` without `num_classes` cannot take labels: no label variant
    assert not testing.supports_conditional(ContextAffine)
    assert testing.supports_conditional(LabelsAndContextAffine)


def test_context_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="no context_features parameter"):
        check_transform(ToyAffine, (4,), context_features=2)
    with pytest.raises(ValueError, match=r"float tensor of shape \(3, 2\)"):
        check_transform(ContextAffine, (4,), context_features=2, context=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"float tensor of shape \(3, 2\)"):
        check_transform(ContextAffine, (4,), context_features=2, context=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        check_transform(ContextAffine, (4,), context_features=2, context=torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="need conditional=True"):
        check_transform(ContextAffine, (4,), {"conditional": False}, context_features=2)
    with pytest.raises(ValueError, match="at least 1"):
        check_transform(ContextAffine, (4,), context_features=0)


@pytest.fixture
def _context_toys() -> Iterator[tuple[str, str, str]]:
    names = ("toy-context-for-tests", "toy-both-for-tests", "toy-blind-for-tests")
    for name, cls in zip(names, (ContextAffine, LabelsAndContextAffine, ContextBlindAffine)):
        transforms.register(name, cls)
    yield names
    for name in names:
        transforms.unregister(name)


def test_run_checks_covers_the_context_variant(_context_toys: tuple[str, str, str]) -> None:
    context_only, both, blind = _context_toys
    results = run_checks(context_only, shapes=[(4,), (2, 2, 2)])
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    assert {r.variant for r in results} == {"unconditional", f"context k={testing.CONTEXT_FEATURES}"}
    vector = [r for r in results if r.context_features is not None]
    assert all(r.conditional for r in vector)
    assert {r.check for r in vector} == set(testing.CHECKS)
    assert {r.shape for r in vector} == {(4,), (2, 2, 2)}

    results = run_checks(both, shapes=[(4,)], context_features=3)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    assert {r.variant for r in results} == {"unconditional", "labels", "context k=3"}
    assert [r.variant for r in run_checks(both, shapes=[(4,)], conditional=False)] == ["unconditional"] * (
        len(testing.CHECKS) - 2
    )
    assert {r.variant for r in run_checks(both, shapes=[(4,)], conditional=True)} == {
        "labels",
        f"context k={testing.CONTEXT_FEATURES}",
    }

    failed = {r.check: r for r in run_checks(blind, shapes=[(4,)]) if not r.passed}
    assert list(failed) == ["context"]
    assert "ignores its context" in failed["context"].message
    assert failed["context"].context_features == testing.CONTEXT_FEATURES


def test_flowkit_check_runs_the_context_checks(_context_toys: tuple[str, str, str]) -> None:
    from click.testing import CliRunner

    from flowkit.cli.main import cli

    context_only, _, blind = _context_toys
    result = CliRunner().invoke(cli, ["check", context_only, "--shape", "3", "--context-features", "3"])
    assert result.exit_code == 0, result.output
    assert f"'{context_only}' takes a real-valued context" in result.output
    assert "(batch, 3) float context" in result.output
    lines = result.output.splitlines()
    assert any("context-shape" in ln and "[context k=3]" in ln for ln in lines), result.output
    assert any(ln.split()[1] == "context" and "[context k=3]" in ln for ln in lines[1:])
    assert "checks passed" in lines[-1] and "context k=3" in lines[-1]

    result = CliRunner().invoke(cli, ["check", blind, "--shape", "3"])
    assert result.exit_code != 0
    assert "FAIL context" in result.output and "ignores its context" in result.output
    assert "1 of" in result.output

    result = CliRunner().invoke(cli, ["check", "toy-both-for-tests", "--shape", "2"])
    assert result.exit_code == 0, result.output
    assert "[labels]" in result.output and "[context k=2]" in result.output


def test_flowkit_check_refuses_a_context_width_for_a_plugin_without_context() -> None:
    from click.testing import CliRunner

    from flowkit.cli.main import cli

    transforms.register("toy-affine-no-context", ToyAffine)
    try:
        result = CliRunner().invoke(cli, ["check", "toy-affine-no-context", "--context-features", "2"])
    finally:
        transforms.unregister("toy-affine-no-context")
    assert result.exit_code != 0
    assert "does not take a real-valued context" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# perturb_parameters
# ---------------------------------------------------------------------------------------------


def test_perturb_parameters_touches_every_parameter_and_no_buffer() -> None:
    module = toy_stack((4,))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    perturb_parameters(module, scale=0.5, generator=torch.Generator().manual_seed(1))
    params = dict(module.named_parameters())
    for key, value in module.state_dict().items():
        if key in params:
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key

    again = toy_stack((4,))
    perturb_parameters(again, scale=0.5, generator=torch.Generator().manual_seed(1))
    for (_, a), (_, b) in zip(module.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# shapes and parameters
# ---------------------------------------------------------------------------------------------


class _Images(Transform):
    """Declares image-only inputs with channel and size constraints (never instantiated)."""

    input_ranks = (3,)
    channel_multiple = 2
    min_channels = 4
    size_multiple = 2
    test_params: ClassVar[dict[str, Any]] = {"hidden": [4, 8], "depth": 2, "kind": ["a"]}


class _Vectors(Transform):
    """Declares vector-only inputs of an even size of at least 6 (never instantiated)."""

    input_ranks = (1,)
    channel_multiple = 2
    min_channels = 6


class _BigPixels(Transform):
    """Image sides must be multiples of 8: only one channel fits in 64 scalars."""

    input_ranks = (3,)
    size_multiple = 8


class _Checkerboard(Transform):
    """Declares the optional ``min_size``: images must be at least 2x2 (never instantiated)."""

    min_size = 2
    min_channels = 3


class _Impossible(Transform):
    """No shape of at most 64 scalars fits (never instantiated)."""

    input_ranks = (3,)
    min_channels = 20
    size_multiple = 2


def _valid(cls: type[Transform], shape: Shape) -> bool:
    if math.prod(shape) > testing.MAX_EVENT_SIZE or len(shape) not in cls.input_ranks:
        return False
    channels = shape[0]
    if channels % cls.channel_multiple or channels < cls.min_channels:
        return False
    min_size = getattr(cls, "min_size", 1)
    return all(s % cls.size_multiple == 0 and s >= min_size for s in shape[1:])


@pytest.mark.parametrize("cls", [_Images, _Vectors, _BigPixels, _Checkerboard, Transform, ToyPermutation])
@given(data=st.data())
def test_drawn_shapes_satisfy_the_declared_constraints(cls: type[Transform], data: st.DataObject) -> None:
    shape = data.draw(shapes_for(cls))
    assert _valid(cls, shape), shape


@pytest.mark.parametrize("cls", [_Images, _Vectors, _BigPixels, _Checkerboard, Transform, ToyPermutation])
def test_example_shapes_are_valid_and_cover_every_rank(cls: type[Transform]) -> None:
    shapes = example_shapes(cls)
    assert shapes == example_shapes(cls)
    assert all(_valid(cls, s) for s in shapes), shapes
    assert {len(s) for s in shapes} == set(cls.input_ranks)
    assert all(1 <= sum(len(s) == r for s in shapes) <= 2 for r in cls.input_ranks)


def test_example_image_shapes_prefer_two_channels() -> None:
    assert example_shapes(Transform) == [(4,), (10,), (2, 4, 4), (2, 4, 5)]
    assert example_shapes(_BigPixels) == [(1, 8, 8)]
    assert example_shapes(_Images) == [(4, 4, 4)]
    assert example_shapes(_Checkerboard) == [(4,), (10,), (3, 4, 4), (3, 4, 5)]


def test_impossible_constraints_say_why() -> None:
    with pytest.raises(ValueError, match="min_channels=20"):
        example_shapes(_Impossible)
    with pytest.raises(ValueError, match="no per-example shape"):
        shapes_for(_Impossible)


@given(data=st.data())
def test_drawn_params_come_from_test_params(data: st.DataObject) -> None:
    params = data.draw(params_for(_Images))
    assert params["hidden"] in (4, 8) and params["depth"] == 2 and params["kind"] == "a"


def test_example_params_take_the_first_choice() -> None:
    assert example_params(_Images) == {"hidden": 4, "depth": 2, "kind": "a"}
    assert example_params(ToyAffine) == {}


def test_import_does_not_need_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None; import flowkit.testing as t; "
        "from flowkit.transform import Transform; print(t.example_shapes(Transform))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "(4,)" in done.stdout


@pytest.fixture
def _registered_toy() -> Iterator[str]:
    transforms.register("toy-stack-for-tests", toy_stack)
    yield "toy-stack-for-tests"
    transforms.unregister("toy-stack-for-tests")


def test_run_checks_with_explicit_shapes(_registered_toy: str) -> None:
    results = run_checks(_registered_toy, shapes=[(3,), (1, 2, 2)], params={"depth": 1}, conditional=False)
    assert {r.shape for r in results} == {(3,), (1, 2, 2)}
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
