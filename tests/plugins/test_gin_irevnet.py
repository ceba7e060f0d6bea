"""GIN (zero-sum affine couplings) and the bijective i-RevNet: log-dets, inverses, shapes, training."""

from __future__ import annotations

import pytest
import torch
from transform_test_utils import jacobian_logdet, perturb

import flowkit
from flowkit import registry
from flowkit.errors import ConfigError, ShapeError
from flowkit.plugins.elementwise import VolumePreservingAffine
from flowkit.plugins.transforms.gin import GIN, GINCoupling
from flowkit.plugins.transforms.irevnet import IRevNet, IRevNetBlock
from flowkit.plugins.transforms.permutation import RandomPermutation
from flowkit.plugins.transforms.squeeze import Squeeze


# -- GIN ---------------------------------------------------------------------------------------
def test_volume_preserving_map_log_scales_sum_to_zero_over_the_transformed_entries():
    gen = torch.Generator().manual_seed(0)
    x, t, raw = torch.randn(3, 5, 3, 8, generator=gen, dtype=torch.float64).unbind(0)
    vp = VolumePreservingAffine(scale="exp")
    s = vp.log_scale((t, raw))
    assert torch.allclose(s.sum(dim=(1, 2)), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    # centred, not zeroed: it still rescales the transformed entries
    assert s.abs().max() > 0.1
    y, logdet = vp.forward(x, (t, raw))
    torch.testing.assert_close(y, x * torch.exp(s) + t)
    assert torch.equal(logdet, torch.zeros(5, dtype=torch.float64))
    assert not vp.autoregressive and vp.volume_preserving


@pytest.mark.parametrize(
    ("shape", "mask"), [((6,), "half"), ((2, 4, 4), "checkerboard"), ((4, 2, 2), "channel")]
)
def test_gin_coupling_logdet_is_exactly_zero_and_matches_the_jacobian(shape, mask):
    torch.manual_seed(0)
    layer = GINCoupling(shape, mask=mask, hidden=8, num_hidden=1, num_blocks=1).double()
    perturb(layer, 0.5)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(jacobian_logdet(layer, x), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    back, logdet_inv = layer.inverse(y)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.equal(logdet_inv, torch.zeros(3, dtype=torch.float64))
    # an affine, not an additive, coupling: some transformed entries are scaled
    jac = torch.autograd.functional.jacobian(
        lambda v: layer(v.reshape(1, *shape))[0].reshape(-1), x[0].reshape(-1)
    )
    assert (jac.diagonal() - 1).abs().max() > 1e-3


def test_gin_coupling_scales_differ_from_plain_affine_only_by_their_mean():
    torch.manual_seed(1)
    gin = GINCoupling((6,), mask="half", hidden=8, num_hidden=1)
    affine = registry.transforms.build(
        "affine-coupling", {"mask": "half", "hidden": 8, "num_hidden": 1}, injected={"event_shape": (6,)}
    )
    perturb(gin, 0.5)
    affine.load_state_dict(gin.state_dict())
    x = torch.randn(4, 6)
    y_gin, _ = gin(x)
    y_aff, ld_aff = affine(x)
    # y_B − t differ by the factor exp(−mean(ŝ)), mean(ŝ) = ld_aff / |B|; t = y_B at x_B = 0
    free = (1 - gin.mask).bool()
    shift = gin(x.masked_fill(free, 0.0))[0]
    ratio = (y_gin - shift)[:, free] / (y_aff - shift)[:, free]
    expected = torch.exp(-ld_aff / free.sum()).unsqueeze(1).expand_as(ratio)
    assert torch.allclose(ratio, expected, atol=1e-5)
    assert torch.equal(y_gin[:, ~free], x[:, ~free])


def test_gin_vector_and_image_architectures():
    vec = GIN((6,), num_blocks=3, hidden=8)
    assert vec.volume_preserving and vec.output_shape == (6,)
    kinds = [type(s) for s in vec.flow]
    assert kinds == [GINCoupling, RandomPermutation, GINCoupling, RandomPermutation, GINCoupling]
    img = GIN((1, 8, 8), num_blocks=2, num_scales=2, hidden=4, res_blocks=1)
    assert img.output_shape == (64,)
    assert sum(isinstance(s, Squeeze) for s in img.flow) == 1
    masks = [s.mask_kind for s in img.flow if isinstance(s, GINCoupling)]
    assert masks == ["checkerboard", "checkerboard", "channel", "channel"]
    perturb(img, 0.3)
    x = torch.rand(2, 1, 8, 8)
    z, logdet = img(x)
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.allclose(img.inverse(z)[0], x, atol=1e-4)


def test_gin_rejects_bad_shapes_and_parameters():
    with pytest.raises(ShapeError, match="divisible by 4"):
        GIN((1, 6, 6), num_scales=3)
    with pytest.raises(ConfigError, match="num_blocks"):
        GIN((4,), num_blocks=0)
    with pytest.raises(ShapeError, match="vectors"):
        GIN((2, 3))


# -- i-RevNet ----------------------------------------------------------------------------------
def test_irevnet_block_follows_the_paper_formula():
    torch.manual_seed(0)
    block = IRevNetBlock((4, 4, 4), width=8)
    perturb(block, 0.3)
    x = torch.randn(2, 4, 4, 4)
    y, logdet = block(x)
    x1, x2 = x.chunk(2, dim=1)
    assert torch.equal(y[:, :2], x2)
    assert torch.allclose(y[:, 2:], x1 + block.f(x2))
    assert torch.equal(logdet, torch.zeros(2))
    fresh = IRevNetBlock((4, 4, 4), width=8)  # zero-initialised F: a pure swap
    assert torch.equal(fresh(x)[0], torch.cat([x2, x1], dim=1))


@pytest.mark.parametrize(
    ("shape", "params", "squeezes"),
    [
        ((1, 8, 8), {}, 2),
        ((3, 8, 4), {"depths": [1, 2], "widths": 8}, 2),
        ((2, 4, 4), {"depths": [1, 1], "widths": [4, 8], "downsample_first": False}, 1),
    ],
)
def test_irevnet_shapes_and_invertibility(shape, params, squeezes):
    torch.manual_seed(0)
    net = registry.transforms.build("irevnet", params, injected={"event_shape": shape})
    assert isinstance(net, IRevNet) and net.volume_preserving
    assert net.output_shape == (torch.Size(shape).numel(),)
    assert sum(isinstance(s, Squeeze) for s in net.flow) == squeezes
    blocks = [s for s in net.flow if isinstance(s, IRevNetBlock)]
    assert len(blocks) == sum(params.get("depths", [2, 2]))
    net = net.double()
    perturb(net, 0.3)
    x = torch.randn(3, *shape, dtype=torch.float64)
    z, logdet = net(x)
    back, logdet_inv = net.inverse(z)
    assert torch.allclose(back, x, atol=1e-10)
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(logdet_inv, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(jacobian_logdet(net, x[:1]), torch.zeros(1, dtype=torch.float64), atol=1e-8)


def test_irevnet_errors_name_the_fix():
    with pytest.raises(ShapeError, match="divisible by 4"):
        IRevNet((1, 6, 6))
    with pytest.raises(ShapeError, match="downsample_first=true"):
        IRevNet((3, 8, 8), depths=[1], widths=[4], downsample_first=False)
    with pytest.raises(ConfigError, match="one block count and one width per stage"):
        IRevNet((1, 8, 8), depths=[1, 1], widths=[4, 4, 4])
    with pytest.raises(ConfigError, match="at least 1"):
        IRevNet((1, 8, 8), depths=[0, 1])
    with pytest.raises(ShapeError, match="images"):
        IRevNet((16,))


# -- tiny training sanity check ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("transform", "overrides"),
    [
        ("gin", ["transform.num_blocks=2", "transform.hidden=16", "transform.res_blocks=1"]),
        ("irevnet", ["transform.depths=[1, 1]", "transform.widths=8"]),
    ],
)
def test_tiny_training_lowers_the_nll(tmp_path, transform, overrides):
    config = flowkit.load_config(
        None,
        [
            *overrides,
            "train.steps=40",
            "train.batch_size=64",
            "train.lr=3e-3",
            "train.eval_every=1000",
            "train.sample_every=1000",
            "train.checkpoint_every=40",
            "eval.n_samples=4",
            "eval.max_examples=128",
            "eval.final_max_examples=128",
        ],
        transform=transform,
        prior="diag-gaussian",
        data="digits",
    )
    summary = flowkit.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    run = flowkit.load_run(tmp_path / "run")
    untrained = flowkit.build_model(config, run.meta)
    x = run.load_data().test[:128] + 0.5 / 17
    with torch.no_grad():
        before = -untrained.log_prob(x).mean()
        after = -run.model.log_prob(x).mean()
    assert summary["status"] == "completed"
    assert after < before - 10.0, (before, after)
    _, logdet = run.model.transform(run.model.preprocess(x)[0])
    assert torch.equal(logdet, torch.zeros(128))
