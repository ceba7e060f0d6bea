"""flowkit.execution.onednn_conv: fused inference convolutions compute the ordinary ops' values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flowkit.execution.onednn_conv as fc
import flowkit.execution.onednn_linear as fl


def _reference(x, conv, relu, residual):
    y = conv(x)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("kernel", [1, 3])
def test_fused_values_without_autograd(channels_last, relu, with_residual, kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 6, kernel, padding="same")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 5, 7, 7).contiguous(memory_format=fmt)
    residual = torch.randn(3, 6, 7, 7).contiguous(memory_format=fmt) if with_residual else None
    with torch.no_grad():
        want = _reference(x, conv, relu, residual)
        got = fc.conv2d(x, conv, relu=relu, residual=residual)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        got = fc.conv2d(x, conv, relu=relu, residual=residual)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_fused_kernel_really_runs():
    """This test machine's PyTorch has oneDNN: a no-grad call must not run aten::convolution."""
    if not fc._active():
        pytest.skip("PyTorch build without the oneDNN convolution kernel")
    conv = nn.Conv2d(4, 4, 3, padding="same")
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fc.conv2d(x, conv, relu=True, residual=x)
    names = {e.name for e in prof.events()}
    assert "mkldnn::_convolution_pointwise" in names and "aten::convolution" not in names


@pytest.mark.parametrize("relu", [False, True])
def test_overwriting_the_residual_without_autograd(relu):
    """The result lands in the residual's buffer; the values are the ordinary ops'."""
    if not fc._active():
        pytest.skip("PyTorch build without the oneDNN convolution kernel")
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding="same")
    x = torch.randn(3, 6, 7, 7).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(3, 6, 7, 7).contiguous(memory_format=torch.channels_last)
    want = _reference(x, conv, relu, residual).detach()
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = fc.conv2d(x, conv, relu=relu, residual=residual, overwrite_residual=True)
    assert got.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(residual, want, rtol=1e-5, atol=1e-5)
    assert "mkldnn::_convolution_pointwise_" in {e.name for e in prof.events()}


def test_a_residual_autograd_needs_is_never_overwritten():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding="same")
    residual = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    kept = residual.clone()
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y = fc.conv2d(x, conv, relu=True, residual=residual, overwrite_residual=True)
    assert y.requires_grad and torch.equal(residual, kept)


def test_conv_net_forward_without_autograd_matches_with_it():
    """ConvNet overwrites its own residual stream without autograd; the output is unchanged."""
    from flowkit.plugins.transforms.conditioners import ConvNet

    torch.manual_seed(0)
    net = ConvNet(4, 6, hidden=8, num_blocks=3, zero_init=False)
    x = torch.randn(2, 4, 6, 6)
    kept = x.clone()
    with torch.no_grad():
        fast = net(x)
    torch.testing.assert_close(fast, net(x).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, kept)


def test_gradients_use_the_ordinary_ops():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding="same")
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = fc.conv2d(x, conv, relu=True, residual=x)
    ref_x = x.detach().clone().requires_grad_()
    ref = _reference(ref_x, conv, True, ref_x)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 3, 2, padding="same"),  # even kernel: asymmetric padding
        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 3, 3, padding=1).double(),
    ],
)
def test_unsupported_layers_fall_back(conv):
    x = torch.randn(2, 3, 6, 6, dtype=conv.weight.dtype)
    with torch.no_grad():
        torch.testing.assert_close(fc.conv2d(x, conv, relu=True), _reference(x, conv, True, None))


def test_switched_off_with_the_linear_switch():
    conv = nn.Conv2d(3, 3, 3, padding="same")
    x = torch.randn(2, 3, 6, 6)
    was = fl.onednn_mode()
    fl.set_onednn_linear(False)
    try:
        assert not fc._active()
        with torch.no_grad():
            assert torch.equal(fc.conv2d(x, conv, relu=True), _reference(x, conv, True, None))
    finally:
        fl.set_onednn_linear(was)
