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

    def __init__(self, event_shape: Shape, *, num_classes: int | None = None,
                 conditional: bool = False) -> None:
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


def toy_stack(event_shape: Shape, *, depth: int = 2, num_classes: int | None = None,
              conditional: bool = False) -> Sequential:
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

    def __init__(self, event_shape: Shape, *, num_classes: int | None = None,
                 conditional: bool = False) -> None:
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
# correct transforms pass
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_toy_affine_passes(shape: Shape) -> None:
    check_transform(ToyAffine, shape)


def test_toy_affine_conditional_passes() -> None:
    check_transform(ToyAffine, (4,), {"conditional": True}, num_classes=3)


@pytest.mark.parametrize("factory, shape, params", [
    (ToyActNorm, (6,), {}),
    (ToyActNorm, (2, 2, 3), {}),
    (ToyPermutation, (7,), {}),
    (toy_stack, (5,), {"depth": 3}),
    (toy_stack, (2, 2, 2), {}),
    (toy_multiscale, (3, 2, 2), {}),
    (toy_flatten_then_permute, (2, 2, 3), {}),
    (Flatten, (2, 3, 2), {}),
    (Reshape, (2, 3, 2), {"output_shape": (3, 4)}),
])
def test_correct_toys_and_core_compositions_pass(factory: Any, shape: Shape,
                                                 params: dict[str, Any]) -> None:
    check_transform(factory, shape, params, seed=3, input_scale=2.0)


def test_conditional_stack_passes_with_given_labels() -> None:
    labels = torch.tensor([0, 2, 1, 1])
    check_transform(toy_stack, (4,), {"conditional": True}, num_classes=3, context=labels,
                    batch_size=4)


def test_check_transform_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_transform(toy_stack, (4,))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# broken transforms are caught by the responsible check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, shape, pattern", [
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
])
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
    with pytest.raises(AssertionError, match=r"dtype-device check failed .*\(float32, meta\).*"
                                             r"logabsdet is on cpu"):
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
        assert {r.check for r in results if r.conditional} == set(testing.CHECKS)
        assert {r.check for r in results if not r.conditional} == \
            set(testing.CHECKS) - {"context"}

        failed = run_checks("toy-signflip-for-tests", shapes=[(4,)], conditional=False)
        by_check = {r.check: r for r in failed}
        assert not by_check["log-det"].passed
        assert "sign is flipped" in by_check["log-det"].message
        assert by_check["round-trip"].passed and by_check["pickle"].passed

        unbuildable = run_checks("toy-affine-for-tests", shapes=[(4,)], conditional=True,
                                 num_classes=1)
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
def test_drawn_shapes_satisfy_the_declared_constraints(cls: type[Transform],
                                                       data: st.DataObject) -> None:
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
    code = ("import sys; sys.modules['hypothesis'] = None; import flowkit.testing as t; "
            "from flowkit.transform import Transform; print(t.example_shapes(Transform))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "(4,)" in done.stdout


@pytest.fixture
def _registered_toy() -> Iterator[str]:
    transforms.register("toy-stack-for-tests", toy_stack)
    yield "toy-stack-for-tests"
    transforms.unregister("toy-stack-for-tests")


def test_run_checks_with_explicit_shapes(_registered_toy: str) -> None:
    results = run_checks(_registered_toy, shapes=[(3,), (1, 2, 2)], params={"depth": 1},
                         conditional=False)
    assert {r.shape for r in results} == {(3,), (1, 2, 2)}
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
