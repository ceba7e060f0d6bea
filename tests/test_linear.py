"""flowkit.execution.onednn_linear: the oneDNN path computes F.linear (+ ReLU) and its gradients.

The path is forced on here (``FLOWKIT_ONEDNN=1``'s mode), so that the oneDNN kernels really run
whatever the autotune would choose on this machine; tests/test_autotune.py tests the choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flowkit.execution.onednn_linear as fl
from flowkit.plugins.transforms.conditioners import MLP

needs_onednn = pytest.mark.skipif(
    not fl.onednn_linear_active(), reason="PyTorch build without the oneDNN linear kernel"
)


@pytest.fixture(autouse=True)
def _any_size(monkeypatch):
    """The small test layers take the oneDNN path too (it is size-gated for speed), without
    measuring (forced on)."""
    monkeypatch.setattr(fl, "MIN_MACS", 0)
    monkeypatch.setattr(fl, "_mode", "on")


def _reference(x, w, b, relu):
    y = F.linear(x, w, b)
    return F.relu(y) if relu else y


def _operands(batch=33, n_in=19, n_out=23, seed=0, strided=False):
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, 2 * n_in + 3, generator=gen)
    x = wide[:, 3 : 3 + n_in] if strided else wide[:, :n_in].contiguous()
    w = torch.randn(n_out, n_in, generator=gen) / n_in**0.5
    b = torch.randn(n_out, generator=gen)
    return x, w, b


@needs_onednn
def test_onednn_path_is_active_on_cpu_float32():
    """This test machine's PyTorch has the kernel, so the fast path must really run."""
    x, w, b = (t.requires_grad_() for t in _operands())
    y = fl.linear(x, w, b, relu=True)
    assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_values_and_gradients_match_autograd(relu, with_bias, strided):
    x, w, b = _operands(strided=strided)
    b = b if with_bias else None
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)]
    bias = None if b is None else b.detach().clone().requires_grad_()
    ref_leaves = [t.detach().clone().requires_grad_() for t in (x, w)]
    ref_bias = None if b is None else b.detach().clone().requires_grad_()
    y = fl.linear(*leaves, bias, relu=relu)
    ref = _reference(*ref_leaves, ref_bias, relu)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    for got, want in zip([*leaves, bias], [*ref_leaves, ref_bias]):
        if want is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_column_slice_input_and_frozen_input():
    """A conditioner reads a column slice of its batch, which does not require grad."""
    wide = torch.randn(64, 40)
    x = wide[:, 10:30]
    w = torch.randn(8, 20, requires_grad=True)
    b = torch.zeros(8, requires_grad=True)
    y = fl.linear(x, w, b, relu=True)
    y.square().sum().backward()
    w_ref = w.detach().clone().requires_grad_()
    b_ref = b.detach().clone().requires_grad_()
    _reference(x, w_ref, b_ref, True).square().sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_double_backward_matches_autograd():
    x, w, b = (t.requires_grad_() for t in _operands(batch=7, n_in=5, n_out=6))
    x_ref, w_ref, b_ref = (t.detach().clone().requires_grad_() for t in (x, w, b))
    results = []
    for args in ((x, w, b), (x_ref, w_ref, b_ref)):
        fn = fl.linear if args[0] is x else _reference
        out = fn(*args, True).tanh().sum()
        (gx,) = torch.autograd.grad(out, args[0], create_graph=True)
        gx.square().sum().backward()
        results.append((gx.detach(), args[1].grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_use_the_ordinary_ops(dtype):
    x, w, b = (t.to(dtype) for t in _operands())
    assert torch.equal(fl.linear(x, w, b, relu=True), _reference(x, w, b, True))


def test_switch_off_gives_the_ordinary_ops():
    x, w, b = _operands()
    was = fl.onednn_mode()
    fl.set_onednn_linear(False)
    try:
        assert fl.onednn_mode() == "off" and not fl.onednn_linear_active()
        assert torch.equal(fl.linear(x, w, b, relu=True), _reference(x, w, b, True))
    finally:
        fl.set_onednn_linear(was)
    assert fl.onednn_mode() == was


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (None, "auto"),
        ("", "auto"),
        ("auto", "auto"),
        ("1", "on"),
        ("true", "on"),
        ("0", "off"),
        ("off", "off"),
        ("No", "off"),
    ],
)
def test_the_environment_switch(value, mode):
    """FLOWKIT_ONEDNN: unset or auto measures; 1 forces the oneDNN path; 0 switches it off."""
    assert fl._mode_from(value) == mode


@needs_onednn
def test_inference_mode_and_no_grad():
    x, w, b = _operands()
    ref = _reference(x, w, b, True)
    with torch.inference_mode():
        torch.testing.assert_close(fl.linear(x, w, b, relu=True), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        y = fl.linear(x, w.requires_grad_(), b, relu=True)
    assert y.grad_fn is None
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_small_layers_use_the_ordinary_ops(monkeypatch):
    monkeypatch.setattr(fl, "MIN_MACS", 1 << 21)
    x, w, b = (t.requires_grad_() for t in _operands())  # 33 × 19 × 23 multiply-adds
    assert type(fl.linear(x, w, b).grad_fn).__name__ == "AddmmBackward0"
    x, w, b = (t.requires_grad_() for t in _operands(batch=256, n_in=128, n_out=128))
    assert type(fl.linear(x, w, b).grad_fn).__name__ == "_OneDNNLinearBackward"


def test_mlp_keeps_its_parameter_names_and_function():
    """Checkpoints of the nn.Sequential MLP load unchanged, and compute the same outputs."""
    torch.manual_seed(0)
    mlp = MLP(6, 4, hidden=16, num_hidden=2, zero_init=False)
    assert list(mlp.state_dict()) == [
        "body.0.weight",
        "body.0.bias",
        "body.2.weight",
        "body.2.bias",
        "out.weight",
        "out.bias",
    ]
    x = torch.randn(10, 6)
    torch.testing.assert_close(mlp(x), mlp.out(mlp.body(x.clone())), rtol=1e-5, atol=1e-5)
    for shape in [(6,), (3, 5, 6)]:
        x = torch.randn(shape)
        torch.testing.assert_close(mlp(x), mlp.out(mlp.body(x.clone())), rtol=1e-5, atol=1e-5)
