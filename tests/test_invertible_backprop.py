"""Memory-free backprop by inversion gives autograd's gradients while storing no activations."""

from __future__ import annotations

import copy
import pickle
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

import flowkit
from flowkit import registry
from flowkit.builder import build_model
from flowkit.composition import Inverse, Sequential
from flowkit.data import DataMeta
from flowkit.execution.invertible_backprop import (
    InvertibleBackprop,
    enable_invertible_backprop,
    generic_rule,
    is_exact,
    register_rule,
    reindex_rule,
    rule_for,
)
from flowkit.plugins.transforms.actnorm import ActNorm
from flowkit.plugins.transforms.autoregressive import MAF_MAP, AutoregressiveLayer
from flowkit.plugins.transforms.coupling import AdditiveCoupling, AffineCoupling, masked_coupling_rule
from flowkit.plugins.transforms.invconv import InvConv1x1
from flowkit.transform import Shape, Transform


def _perturb(module: nn.Module, scale: float, seed: int = 0) -> None:
    """Move every parameter off its (often zero, identity-making) initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _build(
    name: str,
    shape: Shape,
    params: dict[str, Any],
    num_classes: int | None = None,
    dtype: torch.dtype = torch.float64,
    perturb: float = 0.05,
) -> Transform:
    t = registry.transforms.build(name, params, injected={"event_shape": shape, "num_classes": num_classes})
    t = t.to(dtype).train()
    with torch.no_grad():  # data-dependent init (actnorm) on a warm-up batch
        t(torch.randn(32, *shape, dtype=dtype), _labels(32, num_classes))
    _perturb(t, perturb)
    return t


def _labels(n: int, num_classes: int | None) -> Tensor | None:
    return None if num_classes is None else torch.arange(n) % num_classes


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grads(
    t: Transform, x: Tensor, context: Tensor | None, input_grad: bool = True, seed: int = 1
) -> tuple[Tensor, ...]:
    """Output, log-det, input gradient and parameter gradients for a random linear loss."""
    t.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(input_grad)
    y, logdet = t(x, context)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gl = torch.randn(logdet.shape, generator=gen, dtype=y.dtype)
    ((y * gy).sum() + (logdet * gl).sum()).backward()
    params = [p.grad for p in t.parameters() if p.requires_grad]
    assert all(g is not None for g in params)
    assert (x.grad is not None) == input_grad
    return (y.detach(), logdet.detach(), *params, *([x.grad] if input_grad else []))


def _assert_same_gradients(
    t: Transform,
    x: Tensor,
    context: Tensor | None = None,
    rtol: float = 1e-10,
    input_grad: bool = True,
    chunks: int = 2,
) -> InvertibleBackprop:
    wrapped = InvertibleBackprop(copy.deepcopy(t), chunks=chunks)
    expected = _grads(t, x, context, input_grad)
    got = _grads(wrapped, x, context, input_grad)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        if e.abs().max() == 0:
            assert g.abs().max() == 0, i
        else:
            assert _rel(g, e) < rtol, (i, _rel(g, e))
    return wrapped


def _coupling_stack(dtype: torch.dtype) -> Sequential:
    torch.manual_seed(0)
    blocks = [AdditiveCoupling((12, 8, 8), parity=bool(k % 2), hidden=16, num_blocks=1) for k in range(32)]
    stack = Sequential(blocks)
    _perturb(stack, 0.05)  # larger weights make a 32-block stack expand errors ~1000-fold
    return stack.to(dtype)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_32_block_additive_stack_matches_autograd(dtype: torch.dtype, rtol: float) -> None:
    stack = _coupling_stack(dtype)
    x = torch.randn(4, 12, 8, 8, dtype=dtype)
    wrapped = _assert_same_gradients(stack, x, rtol=rtol)
    assert wrapped.fallback_names == []


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("realnvp", (3, 8, 8), {"num_scales": 2, "hidden": 8, "num_blocks": 1}),
        ("realnvp", (6,), {"num_layers": 4, "hidden": 8, "num_hidden": 1}),
        ("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 2, "hidden": 8}),
        ("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 1, "hidden": 8, "lu": False}),
        ("revnet", (1, 8, 8), {"widths": [4, 8], "blocks_per_stage": 2}),
        ("revnet", (1, 6, 6), {"widths": [4], "pad_to": 8, "kernel_sizes": 1}),
        ("nice", (3, 4, 4), {"num_couplings": 3, "hidden": 8, "num_hidden": 1}),
    ],
)
def test_architectures_match_autograd(name: str, shape: Shape, params: dict[str, Any]) -> None:
    t = _build(name, shape, params)
    wrapped = _assert_same_gradients(t, torch.randn(4, *shape, dtype=torch.float64))
    assert wrapped.fallback_names == []


@pytest.mark.parametrize("chunks", [1, 3, 50])
@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("realnvp", (3, 8, 8), {"num_scales": 2, "hidden": 4, "num_blocks": 1}),
        ("realnvp", (6,), {"num_layers": 2, "hidden": 8, "num_hidden": 1}),
        ("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 1, "hidden": 4}),
        ("revnet", (1, 8, 8), {"widths": [4, 4], "blocks_per_stage": 1}),
    ],
)
def test_any_number_of_batch_chunks_gives_the_same_gradients(
    name: str,
    shape: Shape,
    params: dict[str, Any],
    chunks: int,
) -> None:
    """Slices of an odd batch (5), one slice, and more slices than examples."""
    t = _build(name, shape, params)
    wrapped = _assert_same_gradients(t, torch.randn(5, *shape, dtype=torch.float64), chunks=chunks)
    assert wrapped.chunks == chunks


def test_chunks_with_labels_and_bad_values() -> None:
    t = _build(
        "realnvp",
        (3, 8, 8),
        {"num_scales": 2, "hidden": 8, "num_blocks": 1, "conditional": True},
        num_classes=3,
    )
    _assert_same_gradients(t, torch.randn(7, 3, 8, 8, dtype=torch.float64), _labels(7, 3), chunks=3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunks must be a positive integer"):
            InvertibleBackprop(t, chunks=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("realnvp", (3, 8, 8), {"num_scales": 2, "hidden": 4, "num_blocks": 1}),
        ("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 1, "hidden": 4}),
        ("revnet", (1, 8, 8), {"widths": [4, 4], "blocks_per_stage": 1}),
    ],
)
def test_inputs_without_gradient(name: str, shape: Shape, params: dict[str, Any]) -> None:
    """Training data does not require a gradient: the first block skips ∂L/∂x."""
    t = _build(name, shape, params)
    _assert_same_gradients(t, torch.randn(4, *shape, dtype=torch.float64), input_grad=False)


def test_glow_in_float32_matches_autograd() -> None:
    t = _build("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 2, "hidden": 8}, dtype=torch.float32)
    _assert_same_gradients(t, torch.randn(4, 3, 8, 8), rtol=1e-5)


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_conditional_transforms_match_autograd(name: str) -> None:
    params: dict[str, Any] = {"hidden": 8, "conditional": True}
    params |= {"num_scales": 2, "num_blocks": 1} if name == "realnvp" else {"num_levels": 2, "num_steps": 1}
    t = _build(name, (3, 8, 8), params, num_classes=3)
    _assert_same_gradients(t, torch.randn(6, 3, 8, 8, dtype=torch.float64), _labels(6, 3))


def test_nested_structures_match_autograd() -> None:
    """A multi-scale architecture inside a sequence, followed by vector blocks and an Inverse."""
    torch.manual_seed(0)
    inner = registry.transforms.build(
        "realnvp",
        {"num_scales": 2, "hidden": 4, "num_blocks": 1},
        injected={"event_shape": (2, 4, 4), "num_classes": None},
    )
    t = Sequential(
        [
            inner,
            Sequential(
                [
                    AffineCoupling((32,), mask="alternate", hidden=8, num_hidden=1),
                    Inverse(AffineCoupling((32,), parity=True, hidden=8, num_hidden=1)),
                ]
            ),
            ActNorm((32,)),
        ]
    ).double()
    _perturb(t, 0.05)
    wrapped = _assert_same_gradients(t, torch.randn(4, 2, 4, 4, dtype=torch.float64))
    assert wrapped.fallback_names == []


def test_fallback_blocks_use_autograd_and_are_reported() -> None:
    torch.manual_seed(0)
    t = Sequential(
        [
            AdditiveCoupling((6,), hidden=8, num_hidden=1),
            AutoregressiveLayer((6,), map=MAF_MAP, hidden=8, num_hidden=1),
            AffineCoupling((6,), parity=True, hidden=8, num_hidden=1),
            AutoregressiveLayer((6,), map=MAF_MAP, direction="iaf", hidden=8, num_hidden=1),
        ]
    ).double()
    _perturb(t, 0.1)
    assert [is_exact(b) for b in t] == [True, False, True, False]
    wrapped = _assert_same_gradients(t, torch.randn(5, 6, dtype=torch.float64))
    assert wrapped.fallback_names == ["steps.1 (AutoregressiveLayer)", "steps.3 (AutoregressiveLayer)"]

    class Holder(nn.Module):
        def __init__(self, transform: Transform) -> None:
            super().__init__()
            self.transform = transform

    lines: list[str] = []
    holder = Holder(t)
    names = enable_invertible_backprop(holder, lines.append)
    assert names == wrapped.fallback_names and isinstance(holder.transform, InvertibleBackprop)
    assert len(lines) == 1 and "steps.1 (AutoregressiveLayer)" in lines[0]
    assert enable_invertible_backprop(holder, lines.append) == names  # idempotent
    assert holder.transform.base is t


class _Exp(Transform):
    """Test block ``y = exp(a) ⊙ x + b`` opting in with ``exact_inverse = True``."""

    exact_inverse: ClassVar[bool] = True

    def __init__(self, event_shape: Shape) -> None:
        super().__init__(event_shape)
        self.a = nn.Parameter(0.1 * torch.randn(event_shape))
        self.b = nn.Parameter(torch.randn(event_shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.a) + self.b, self.a.sum().expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (y - self.b) * torch.exp(-self.a), -self.a.sum().expand(y.shape[0])


class _Untrusted(AdditiveCoupling):
    """A subclass of an allowed type that opts out."""

    exact_inverse = False


def test_exact_inverse_attribute_opts_in_and_out() -> None:
    torch.manual_seed(0)
    t = Sequential([_Exp((4,)), _Untrusted((4,), hidden=4, num_hidden=1), _Exp((4,))]).double()
    _perturb(t, 0.1)
    assert [is_exact(b) for b in t] == [True, False, True]
    assert not is_exact(Inverse(_Untrusted((4,), hidden=4, num_hidden=1)))
    wrapped = _assert_same_gradients(t, torch.randn(3, 4, dtype=torch.float64))
    assert wrapped.fallback_names == ["steps.1 (_Untrusted)"]


def test_every_built_in_exact_block_declares_its_rule() -> None:
    """The blocks of the former built-in allow-list declare the same rules themselves."""
    from flowkit.composition import Reshape
    from flowkit.plugins.transforms.glow import GlowCoupling, SplitPrior, glow_coupling_rule
    from flowkit.plugins.transforms.nice import DiagonalScaling
    from flowkit.plugins.transforms.permutation import RandomPermutation, ReversePermutation
    from flowkit.plugins.transforms.revnet import RevNetBlock, revnet_rule
    from flowkit.plugins.transforms.squeeze import Squeeze
    from flowkit.plugins.transforms.subsample import GRNSubsample, ZeroPad

    expected = {
        AdditiveCoupling: masked_coupling_rule,
        AffineCoupling: masked_coupling_rule,
        GlowCoupling: glow_coupling_rule,
        RevNetBlock: revnet_rule,
        ActNorm: generic_rule,
        InvConv1x1: generic_rule,
        SplitPrior: glow_coupling_rule,
        DiagonalScaling: generic_rule,
        Squeeze: reindex_rule,
        GRNSubsample: reindex_rule,
        ZeroPad: reindex_rule,
        RandomPermutation: reindex_rule,
        ReversePermutation: reindex_rule,
        Reshape: reindex_rule,
    }
    for cls, rule in expected.items():
        assert vars(cls)["inversion_rule"] is rule, cls.__name__
        block = object.__new__(cls)  # rule_for reads only the class
        assert rule_for(block) is rule, cls.__name__


def test_the_core_names_no_plugin() -> None:
    """Wrapping and training a stack of third-party blocks imports no built-in plugin."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from flowkit.composition import Flatten, Sequential\n"
        "from flowkit.execution.invertible_backprop import InvertibleBackprop\n"
        "from flowkit.reconstruction import generic_rule\n"
        "from flowkit.transform import Transform\n"
        "class Shift(Transform):\n"
        "    inversion_rule = generic_rule\n"
        "    def __init__(self, shape):\n"
        "        super().__init__(shape)\n"
        "        self.b = torch.nn.Parameter(torch.ones(shape))\n"
        "    def forward(self, x, context=None):\n"
        "        return x + self.b, self.zero_logdet(x)\n"
        "    def inverse(self, y, context=None):\n"
        "        return y - self.b, self.zero_logdet(y)\n"
        "t = InvertibleBackprop(Sequential([Shift((2, 3)), Flatten((2, 3)), Shift((6,))]))\n"
        "y, _ = t(torch.randn(4, 2, 3, requires_grad=True))\n"
        "y.sum().backward()\n"
        "assert t.fallback_names == [], t.fallback_names\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('flowkit.plugins', 'flowkit.cli')))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class _Shifted(AdditiveCoupling):
    """Changes the maths (the forward adds 1) and declares no rule: never reconstructed."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = super().forward(x, context)
        return y + 1.0, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().inverse(y - 1.0, context)


class _Redeclared(AdditiveCoupling):
    """Same maths, and trusts its parent's rule explicitly."""

    inversion_rule = AdditiveCoupling.inversion_rule


class _OwnRule(_Exp):
    """A third-party block with its own rule, declared as a static method."""

    calls: ClassVar[int] = 0

    @staticmethod
    def inversion_rule(block: Any, *args: Any) -> Any:
        _OwnRule.calls += 1
        return generic_rule(block, *args)


class _OptedOut(_Redeclared):
    """``exact_inverse = False`` wins over an inherited (and over a declared) rule."""

    exact_inverse = False
    inversion_rule = AdditiveCoupling.inversion_rule


def test_rules_are_declared_per_class_and_not_inherited() -> None:
    """A subclass of a block with a rule keeps ordinary autograd unless it declares one itself;
    ``exact_inverse = True`` (the generic rule) is inherited; ``False`` always opts out."""
    torch.manual_seed(0)
    kw: dict[str, Any] = {"hidden": 4, "num_hidden": 1}
    t = Sequential(
        [
            _Shifted((4,), **kw),
            _Redeclared((4,), parity=True, **kw),
            _OwnRule((4,)),
            type("_ExpChild", (_Exp,), {})((4,)),
            _OptedOut((4,), **kw),
        ]
    ).double()
    _perturb(t, 0.1)
    assert [rule_for(b) for b in t] == [
        None,
        masked_coupling_rule,
        _OwnRule.inversion_rule,
        generic_rule,
        None,
    ]
    assert not is_exact(Inverse(_Shifted((4,), **kw))) and is_exact(Inverse(_Redeclared((4,), **kw)))
    _OwnRule.calls = 0
    wrapped = _assert_same_gradients(t, torch.randn(3, 4, dtype=torch.float64), chunks=1)
    assert wrapped.fallback_names == ["steps.0 (_Shifted)", "steps.4 (_OptedOut)"]
    assert _OwnRule.calls == 1


def test_the_callers_input_is_never_touched() -> None:
    stack = _coupling_stack(torch.float32)
    wrapped = InvertibleBackprop(stack)
    x = torch.randn(4, 12, 8, 8, requires_grad=True)
    before = x.detach().clone()
    ptr, nbytes, version = x.data_ptr(), x.untyped_storage().nbytes(), x._version
    y, logdet = wrapped(x)
    (y.square().sum() + logdet.sum()).backward()
    assert x.data_ptr() == ptr and x.untyped_storage().nbytes() == nbytes
    assert x._version == version and torch.equal(x.detach(), before)
    # a stack that is only a view of its input still hands out its own tensor
    reshape = InvertibleBackprop(flowkit.composition.Flatten((12, 8, 8)))
    out, _ = reshape(x)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


def _saved_bytes(fn: Any) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_only_the_output_is_stored_for_backward() -> None:
    stack = _coupling_stack(torch.float32)
    wrapped = InvertibleBackprop(stack)
    x = torch.randn(4, 12, 8, 8, requires_grad=True)
    activation = x.numel() * x.element_size()
    assert _saved_bytes(lambda: wrapped(x)) == activation
    assert _saved_bytes(lambda: stack(x)) > 32 * activation


def test_no_grad_and_eval_mode_call_the_transform_directly() -> None:
    stack = _coupling_stack(torch.float32)
    wrapped = InvertibleBackprop(stack)
    x = torch.randn(2, 12, 8, 8, requires_grad=True)
    with torch.no_grad():
        y, _ = wrapped(x)
    assert torch.equal(y, stack(x)[0])
    wrapped.eval()
    y, _ = wrapped(x)
    assert "ChainFunction" not in type(y.grad_fn).__name__
    wrapped.train()
    y, _ = wrapped(x)
    assert "ChainFunction" in type(y.grad_fn).__name__
    z, _ = wrapped.inverse(y.detach())
    assert torch.allclose(z, x.detach(), atol=1e-4)


def test_actnorm_data_dependent_init_runs_the_ordinary_forward() -> None:
    torch.manual_seed(0)
    t = Sequential([ActNorm((4, 4, 4)), InvConv1x1((4, 4, 4)), ActNorm((4, 4, 4))]).double()
    wrapped = InvertibleBackprop(copy.deepcopy(t))
    x = 3.0 + 2.0 * torch.randn(8, 4, 4, 4, dtype=torch.float64)
    y, _ = wrapped(x)  # initialises both actnorms, one after the other
    assert all(bool(m.initialized) for m in wrapped.modules() if isinstance(m, ActNorm))
    assert y.mean().abs() < 1e-8 and "ChainFunction" not in type(y.grad_fn).__name__
    t(x)
    _assert_same_gradients(t, x)


def test_state_dict_and_pickling_are_unchanged() -> None:
    t = _build("glow", (3, 8, 8), {"num_levels": 2, "num_steps": 1, "hidden": 4})
    wrapped = InvertibleBackprop(copy.deepcopy(t))
    state = wrapped.state_dict()
    assert list(state) == list(t.state_dict())
    fresh = copy.deepcopy(t)
    _perturb(fresh, 0.1, seed=5)
    fresh.load_state_dict(state)  # saved with the wrapper, loaded without
    rewrapped = InvertibleBackprop(copy.deepcopy(fresh))
    _perturb(rewrapped, 0.1, seed=6)
    rewrapped.load_state_dict(t.state_dict())  # saved without, loaded with
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for other in (fresh, rewrapped, pickle.loads(pickle.dumps(wrapped))):
        assert torch.allclose(other(x)[0], t(x)[0], atol=1e-12)
    with pytest.raises(RuntimeError, match="Unexpected"):
        wrapped.load_state_dict({**state, "nonsense": torch.zeros(1)})
    twin = copy.deepcopy(wrapped)  # the copy's plan runs the copy's blocks
    _perturb(twin, 0.1, seed=7)
    assert torch.allclose(twin(x)[0], twin.base(x)[0], atol=1e-12)
    assert not torch.allclose(twin(x)[0], wrapped(x)[0])


def test_training_steps_give_the_same_parameters() -> None:
    cfg = flowkit.load_config("realnvp-digits", ["transform.hidden=4", "transform.num_blocks=1"])
    meta = DataMeta((1, 8, 8), levels=17, num_classes=10, default_preprocess="logit")
    torch.manual_seed(0)
    plain = build_model(cfg, meta).double()
    _perturb(plain, 0.05)
    memory_free = copy.deepcopy(plain)
    assert enable_invertible_backprop(memory_free, log=lambda _: None) == []
    data = torch.rand(5, 16, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05
    for model in (plain, memory_free):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for x in data:
            opt.zero_grad(set_to_none=True)
            (-model.log_prob(x).mean()).backward()
            opt.step()
    for (name, p), q in zip(plain.named_parameters(), memory_free.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-11), name
    assert set(plain.state_dict()) == set(memory_free.state_dict())


def test_register_rule_is_used_for_its_type() -> None:
    calls: list[str] = []

    def counting_rule(block: Transform, *args: Any) -> Any:
        calls.append(type(block).__name__)
        return generic_rule(block, *args)

    class _Registered(_Exp):
        """Same maths as the opt-in test block, with its own rule."""

    register_rule(_Registered, counting_rule)
    torch.manual_seed(0)
    t = Sequential([_Registered((4,)), _Exp((4,))]).double()
    _assert_same_gradients(t, torch.randn(3, 4, dtype=torch.float64), chunks=1)
    assert calls == ["_Registered"]
    calls.clear()
    _assert_same_gradients(t, torch.randn(3, 4, dtype=torch.float64), chunks=2)
    assert calls == ["_Registered", "_Registered"]  # once per slice of the batch


def test_train_invertible_backprop_key_gives_the_same_run(tmp_path) -> None:
    """``train.invertible_backprop = true`` trains the same model as ordinary autograd."""
    from flowkit.runs import load_run

    common = [
        "train.steps=4",
        "train.eval_every=0",
        "train.sample_every=0",
        "train.threads=1",
        "transform.num_scales=1",
        "transform.hidden=8",
        "transform.num_blocks=1",
        "eval.final_max_examples=50",
    ]
    runs = {}
    for flag in ("false", "true"):
        cfg = flowkit.load_config("realnvp-digits", [*common, f"train.invertible_backprop={flag}"])
        runs[flag] = flowkit.train(cfg, tmp_path / flag, progress=False, log=lambda _: None)
    assert runs["true"]["test_nll"] == pytest.approx(runs["false"]["test_nll"], rel=1e-4)
    a = load_run(tmp_path / "false").model.state_dict()
    b = load_run(tmp_path / "true").model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_train_invertible_backprop_chunks_key(tmp_path) -> None:
    """The chunk count reaches the wrapper, and a bad one is a config error naming the key."""
    from flowkit.errors import ConfigError
    from flowkit.trainer import Trainer

    common = [
        "train.steps=1",
        "train.invertible_backprop=true",
        "transform.num_scales=1",
        "transform.hidden=8",
        "transform.num_blocks=1",
    ]
    cfg = flowkit.load_config("realnvp-digits", [*common, "train.invertible_backprop_chunks=3"])
    trainer = Trainer(cfg, tmp_path / "ok", progress=False, log=lambda _: None)
    assert isinstance(trainer.model.transform, InvertibleBackprop)
    assert trainer.model.transform.chunks == 3
    with pytest.raises(
        ConfigError,
        match=r"\[train\] invertible_backprop_chunks must be at least 1 "
        r"\(1: the whole batch at once\), got 0",
    ):
        flowkit.load_config("realnvp-digits", [*common, "train.invertible_backprop_chunks=0"])


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize(
    ("shape", "mask"),
    [((7,), "half"), ((7,), "alternate"), ((6, 4, 4), "channel"), ((2, 4, 4), "checkerboard")],
)
@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling], ids=lambda c: c.__name__)
def test_coupling_rule_on_every_mask(cls: type, shape: Shape, mask: str, conditional: bool) -> None:
    """Sliced (half, alternate, channel) and masked (checkerboard) reconstructions, with and
    without class labels, give autograd's gradients in float64."""
    torch.manual_seed(0)
    extra = {"conditional": True, "num_classes": 3} if conditional else {}
    blocks = [
        cls(shape, mask=mask, parity=bool(k % 2), hidden=8, num_hidden=1, num_blocks=1, **extra)
        for k in range(3)
    ]
    stack = Sequential(blocks).double()
    _perturb(stack, 0.3)
    x = torch.randn(5, *shape, dtype=torch.float64)
    wrapped = _assert_same_gradients(stack, x, _labels(5, 3 if conditional else None))
    assert wrapped.fallback_names == []
