"""The private oneDNN kernels of flowkit.execution.onednn_linear and .onednn_conv are probed.

Each test forces the portable path — the operators taken away from ``torch.ops.mkldnn``, or a
kernel that raises on a real call — and checks that the ordinary ops give the same values and
gradients, so a PyTorch build without these private operators (or one that changed them) still
trains and samples correctly.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flowkit.execution.onednn_conv as fc
import flowkit.execution.onednn_linear as fl


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test probes afresh (and the earlier state comes back afterwards); small layers
    are eligible."""
    monkeypatch.setattr(fl, "_probed", None)
    monkeypatch.setattr(fc, "_probed", None)
    monkeypatch.setattr(fl, "_mode", "on")  # forced on: no measuring
    monkeypatch.setattr(fl, "MIN_MACS", 0)


@pytest.fixture
def no_mkldnn_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyTorch build whose ``torch.ops.mkldnn`` has none of the private kernels."""
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace(), raising=False)


def _operands(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(17, 9, generator=gen)
    w = torch.randn(11, 9, generator=gen) / 3
    b = torch.randn(11, generator=gen)
    return x, w, b


def _linear_matches_reference(relu: bool) -> torch.Tensor:
    """``fl.linear`` against ``F.linear`` (+ ReLU): values and all three gradients."""
    x, w, b = _operands()
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    got = fl.linear(*leaves, relu=relu)
    got.square().sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    want = F.linear(*ref_leaves)
    want = F.relu(want) if relu else want
    want.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, r in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fl.linear(x, w, b, relu=relu), want, rtol=1e-5, atol=1e-5)
    return got


@pytest.mark.parametrize("relu", [False, True])
def test_linear_without_the_operator_uses_the_ordinary_ops(no_mkldnn_ops: None, relu: bool):
    assert not fl.has_mkldnn_op("_linear_pointwise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", fl.OneDNNFallbackWarning)  # detected, not failed
        assert not fl.onednn_linear_active()
        got = _linear_matches_reference(relu)
    assert type(got.grad_fn).__name__ != "_OneDNNLinearBackward"


def test_linear_kernel_with_a_changed_signature_fails_the_probe(monkeypatch: pytest.MonkeyPatch):
    def changed(*args: object) -> torch.Tensor:
        raise TypeError("_linear_pointwise() takes 3 positional arguments")

    monkeypatch.setattr(fl, "_kernel", lambda: changed)
    assert not fl.onednn_linear_active()
    _linear_matches_reference(relu=True)


@pytest.mark.parametrize("needs_grad", [False, True])
def test_linear_kernel_that_fails_on_a_real_call_falls_back(
    monkeypatch: pytest.MonkeyPatch, needs_grad: bool
):
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("oneDNN: could not create a primitive descriptor")

    monkeypatch.setattr(fl, "_probed", True)  # the probe passed; the real call then fails
    monkeypatch.setattr(fl, "_kernel", lambda: broken)
    x, w, b = (t.requires_grad_(needs_grad) for t in _operands())
    with pytest.warns(fl.OneDNNFallbackWarning, match="ordinary PyTorch ops from now on"):
        got = fl.linear(x, w, b, relu=True)
    torch.testing.assert_close(got, F.relu(F.linear(x, w, b)), rtol=1e-5, atol=1e-5)
    assert not fl.onednn_linear_active()  # for the rest of the process
    with warnings.catch_warnings():
        warnings.simplefilter("error", fl.OneDNNFallbackWarning)  # warned once only
        fl.linear(x, w, b)


def test_linear_backward_falls_back_when_the_gemm_fails(monkeypatch: pytest.MonkeyPatch):
    if not fl.onednn_linear_active():
        pytest.skip("PyTorch build without the oneDNN linear kernel")
    x, w, b = (t.clone().requires_grad_() for t in _operands())
    y = fl.linear(x, w, b, relu=True)
    assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("oneDNN GEMM failed")

    monkeypatch.setattr(fl, "_gemm", broken)
    with pytest.warns(fl.OneDNNFallbackWarning):
        y.square().sum().backward()
    rx, rw, rb = (t.clone().requires_grad_() for t in _operands())
    F.relu(F.linear(rx, rw, rb)).square().sum().backward()
    for got, want in ((x, rx), (w, rw), (b, rb)):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)


def _conv_case() -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding="same")
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    return conv, x, r


def test_conv_without_the_operators_uses_the_ordinary_ops(no_mkldnn_ops: None):
    conv, x, r = _conv_case()
    assert not fl.has_mkldnn_op("_convolution_pointwise")
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        assert not fc._active()
        with torch.profiler.profile() as prof:
            got = fc.conv2d(x, conv, relu=True, residual=r.clone(), overwrite_residual=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "aten::convolution" in {e.name for e in prof.events()}


def test_conv_kernel_that_fails_on_a_real_call_falls_back(monkeypatch: pytest.MonkeyPatch):
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("oneDNN: unsupported post-op")

    monkeypatch.setattr(fl, "_probed", True)
    monkeypatch.setattr(fc, "_probed", True)
    monkeypatch.setattr(fc, "_kernels", lambda: (broken, broken, broken))
    conv, x, r = _conv_case()
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        with pytest.warns(fl.OneDNNFallbackWarning, match="convolution failed"):
            got = fc.conv2d(x, conv, relu=True, residual=r)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not fc._active()
