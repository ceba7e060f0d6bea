"""Glow (Kingma & Dhariwal 2018): actnorm, invertible 1×1 convolution, coupling, split prior, model."""

from __future__ import annotations

import io
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transform_test_utils import jacobian_logdet

import flowkit
from flowkit.composition import MultiScale
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import validate_parameters
from flowkit.plugins.transforms.glow import (
    SCALE_OFFSET,
    ActNorm,
    Glow,
    GlowCoupling,
    InvConv1x1,
    SplitPrior,
)
from flowkit.registry import transforms
from flowkit.testing import check_transform, perturb_parameters
from flowkit.transform import Transform

PLUGINS = {"actnorm": ActNorm, "invconv1x1": InvConv1x1, "glow-coupling": GlowCoupling, "glow": Glow}
GLOW_SMALL: dict[str, Any] = {"num_levels": 2, "num_steps": 2, "hidden": 4}


@pytest.fixture
def registered() -> Any:
    """Register the Glow plugins at runtime (the editable install may predate their entry points)."""
    for name, cls in PLUGINS.items():
        transforms.register(name, cls)
    yield
    for name in PLUGINS:
        transforms.unregister(name)


def perturbed(module: Transform, seed: int = 0, scale: float = 0.1) -> Transform:
    """``module`` in float64 and eval mode with noisy parameters (zero-init layers stop being
    trivial)."""
    module = module.double().eval()
    perturb_parameters(module, scale, generator=torch.Generator().manual_seed(seed))
    return module


# -- the conformance suite on every part ------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "shape", "params", "num_classes"),
    [
        (ActNorm, (5,), {}, None),
        (ActNorm, (3, 4, 4), {}, None),
        (InvConv1x1, (6,), {"lu": True}, None),
        (InvConv1x1, (3, 2, 3), {"lu": True, "init_seed": 3}, None),
        (InvConv1x1, (3, 2, 3), {"lu": False}, None),
        (GlowCoupling, (5,), {"hidden": 8}, None),
        (GlowCoupling, (4, 2, 3), {"hidden": 8}, None),
        (GlowCoupling, (3, 2, 2), {"hidden": 8, "conditional": True}, 3),
        (SplitPrior, (4, 2, 2), {}, None),
        (SplitPrior, (3, 2, 2), {"conditional": True}, 3),
        (Glow, (1, 8, 8), GLOW_SMALL, None),
        (Glow, (3, 4, 4), {**GLOW_SMALL, "num_steps": 1, "lu": False}, None),
        (Glow, (2, 4, 8), {**GLOW_SMALL, "num_steps": 1, "conditional": True}, 3),
        (Glow, (2, 4, 4), {**GLOW_SMALL, "num_levels": 1}, None),
    ],
    ids=lambda v: str(v) if not isinstance(v, type) else v.__name__,
)
def test_conformance(
    cls: type[Transform], shape: tuple[int, ...], params: dict[str, Any], num_classes: int | None
) -> None:
    check_transform(cls, shape, params, num_classes=num_classes)


def test_entry_point_names_build(registered: Any) -> None:
    for name, cls in PLUGINS.items():
        shape = (2, 4, 4) if name != "glow" else (1, 8, 8)
        built = transforms.build(
            name,
            {"hidden": 4} if "glow" in name else {},
            injected={"event_shape": shape, "num_classes": None},
        )
        assert isinstance(built, cls)
        assert (cls.__doc__ or "").strip().splitlines()[0]


# -- actnorm -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 5), (6,)])
def test_actnorm_data_dependent_init(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = (
        torch.randn(64, *shape) * torch.linspace(0.5, 3.0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
        + 2.0
    )
    norm = ActNorm(shape)
    assert not bool(norm.initialized)
    y, logdet = norm(x)  # training mode: initialises on this batch
    assert bool(norm.initialized)
    dims = [0, *range(2, x.dim())]
    torch.testing.assert_close(y.mean(dim=dims), torch.zeros(shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=dims, correction=0), torch.ones(shape[0]), atol=1e-4, rtol=0)
    positions = math.prod(shape[1:])
    torch.testing.assert_close(logdet, torch.full((64,), positions * float(norm.log_scale.detach().sum())))


def test_actnorm_reads_a_loaded_initialized_flag_again() -> None:
    """The forward pass caches the flag once true; loading a state (here an uninitialised one)
    makes it read the buffer again, so the next training call initialises."""
    fresh_state = ActNorm((2, 3, 3)).state_dict()
    norm = ActNorm((2, 3, 3))
    norm(torch.randn(8, 2, 3, 3) * 5 + 1)
    assert norm.is_initialized()
    norm.load_state_dict(fresh_state)
    assert not norm.is_initialized()
    y, _ = norm(torch.randn(8, 2, 3, 3) * 3 - 2)
    assert norm.is_initialized()
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


def test_actnorm_does_not_initialise_in_eval_or_inverse() -> None:
    x = torch.randn(8, 2, 3, 3) * 5 + 1
    norm = ActNorm((2, 3, 3))
    back, logdet = norm.inverse(x)  # before init: the identity, and no init
    assert torch.equal(back, x) and torch.equal(logdet, torch.zeros(8))
    assert not bool(norm.initialized)
    norm.eval()
    y, _ = norm(x)
    assert torch.equal(y, x) and not bool(norm.initialized)
    norm.train()
    norm(x)
    assert bool(norm.initialized)


def test_actnorm_flag_survives_state_dict_and_blocks_reinit() -> None:
    torch.manual_seed(0)
    shape = (3, 4, 4)
    norm = ActNorm(shape)
    norm(torch.randn(32, *shape) * 2 + 1)  # initialise
    assert "initialized" in norm.state_dict()
    buffer = io.BytesIO()
    torch.save(norm.state_dict(), buffer)
    buffer.seek(0)
    fresh = ActNorm(shape)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert bool(fresh.initialized)
    probe = torch.randn(5, *shape)
    with torch.no_grad():
        for a, b in zip(norm.eval()(probe), fresh.eval()(probe)):
            assert torch.equal(a, b)
    # a training-mode forward on data with other statistics must not re-initialise
    fresh.train()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh(torch.randn(32, *shape) * 7 - 3)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_actnorm_bad_eps() -> None:
    with pytest.raises(ConfigError, match="eps"):
        ActNorm((4,), eps=0.0)


# -- invertible 1×1 convolution ---------------------------------------------------------------
@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5), (5,)])
def test_invconv_logdet_closed_form(lu: bool, shape: tuple[int, ...]) -> None:
    conv = perturbed(InvConv1x1(shape, lu=lu, init_seed=7), seed=1, scale=0.3)
    if lu:  # assemble W = P L (U + diag(sign·exp(log|s|))) independently of matrix()
        c = shape[0]
        lower = torch.tril(conv.lower, -1) + torch.eye(c, dtype=torch.float64)
        upper = torch.triu(conv.upper, 1) + torch.diag(conv.sign * conv.log_abs_diag.exp())
        weight = conv.perm @ lower @ upper
        torch.testing.assert_close(conv.matrix(), weight)
    else:
        weight = conv.weight
    expected = math.prod(shape[1:]) * torch.linalg.slogdet(weight.detach())[1]
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, logdet = conv(x)
    torch.testing.assert_close(logdet, expected.expand(3))
    # y = W x at every pixel
    torch.testing.assert_close(y, torch.einsum("ij,bj...->bi...", weight, x))
    back, logdet_inv = conv.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(
        conv.inverse_matrix() @ conv.matrix(), torch.eye(shape[0], dtype=torch.float64)
    )


@pytest.mark.parametrize("lu", [True, False])
def test_invconv_starts_as_seeded_rotation(lu: bool) -> None:
    a, b, c = (InvConv1x1((6, 2, 2), lu=lu, init_seed=s) for s in (0, 0, 1))
    w = a.matrix().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    assert torch.equal(w, b.matrix().detach())
    assert not torch.allclose(w, c.matrix().detach())
    assert abs(float(a.log_abs_det().detach())) < 1e-5  # |det| = 1


# -- Glow coupling ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 3), (5,)])
def test_glow_coupling_at_init_scales_by_sigmoid_offset(shape: tuple[int, ...]) -> None:
    coupling = GlowCoupling(shape, hidden=8)
    x = torch.randn(4, *shape)
    y, logdet = coupling(x)
    split = shape[0] // 2
    scale = torch.sigmoid(torch.tensor(SCALE_OFFSET))
    # zero-initialised output layer: t = 0, s = sigmoid(2), i.e. identity up to a constant scale
    assert torch.equal(y[:, :split], x[:, :split])
    torch.testing.assert_close(y[:, split:], x[:, split:] * scale)
    n_b = (shape[0] - split) * math.prod(shape[1:])
    torch.testing.assert_close(logdet, torch.full((4,), n_b * float(torch.log(scale))))


def test_glow_coupling_uses_sigmoid_scale() -> None:
    coupling = perturbed(GlowCoupling((4, 3, 3), hidden=8), seed=2, scale=0.3)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    out = coupling.net(x[:, :2])
    shift, scale = out[:, 0::2], torch.sigmoid(out[:, 1::2] + 2.0)
    y, logdet = coupling(x)
    torch.testing.assert_close(y[:, 2:], (x[:, 2:] + shift) * scale)
    torch.testing.assert_close(logdet, scale.log().sum(dim=(1, 2, 3)))
    assert bool((scale < 1).all())


def test_glow_coupling_needs_two_channels() -> None:
    with pytest.raises(ShapeError, match="at least 2"):
        GlowCoupling((1, 4, 4))
    with pytest.raises(ConfigError, match="num_classes"):
        GlowCoupling((4,), conditional=True)


# -- the split prior ----------------------------------------------------------------------------
def test_split_prior_is_the_conditional_gaussian_prior() -> None:
    """log N(ε; 0, I) + log|det| = log N(z; μ(h), σ(h)²): Glow's learned prior of z given h."""
    split = perturbed(SplitPrior((4, 2, 3)), seed=3, scale=0.3)
    x = torch.randn(5, 4, 2, 3, dtype=torch.float64)
    y, logdet = split(x)
    h, z = x[:, :2], x[:, 2:]
    assert torch.equal(y[:, :2], h)
    out = split.net(h)
    mean, log_std = out[:, 0::2], out[:, 1::2]
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = normal.log_prob(z).sum(dim=(1, 2, 3))
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(y[:, 2:]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(standard + logdet, expected)
    torch.testing.assert_close(jacobian_logdet(split, x), logdet)


# -- the Glow model -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_glow_shapes_and_round_trip(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    glow = Glow(shape, **GLOW_SMALL)
    x = torch.rand(6, *shape) - 0.5
    glow(x)  # actnorm initialisation
    glow = perturbed(glow, seed=4)
    x = x.double()
    z, logdet = glow(x)
    assert z.shape == (6, math.prod(shape)) and logdet.shape == (6,)
    assert glow.output_shape == (math.prod(shape),)
    back, logdet_inv = glow.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet)


def test_glow_structure() -> None:
    glow = Glow((3, 16, 16), num_levels=3, num_steps=2, hidden=4)
    assert isinstance(glow.flow, MultiScale) and len(glow.flow.levels) == 3
    kinds = [[type(s).__name__ for s in level] for level in glow.flow.levels]
    step = ["ActNorm", "InvConv1x1", "GlowCoupling"]
    assert kinds[0] == ["Squeeze", *step, *step, "SplitPrior"]
    assert kinds[2] == ["Squeeze", *step, *step]
    # every level squeezes what the previous one kept: 12×8×8 → keep 6 → 24×4×4 → keep 12 → 48×2×2
    assert [level.output_shape for level in glow.flow.levels] == [(12, 8, 8), (24, 4, 4), (48, 2, 2)]
    seeds = {
        tuple(m.matrix().detach().flatten()[:3].tolist())
        for m in glow.modules()
        if isinstance(m, InvConv1x1) and m.event_shape[0] == 12
    }
    assert len(seeds) == 2  # each 1×1 convolution starts from its own rotation


def test_glow_logdet_matches_jacobian_with_split_priors() -> None:
    torch.manual_seed(0)
    glow = Glow((2, 4, 4), num_levels=2, num_steps=1, hidden=4, conditional=True, num_classes=3)
    glow(torch.randn(8, 2, 4, 4), torch.arange(8) % 3)
    glow = perturbed(glow, seed=5)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 2])
    _, logdet = glow(x, labels)
    torch.testing.assert_close(jacobian_logdet(glow, x, labels), logdet, atol=1e-8, rtol=1e-8)
    # the (perturbed, so non-trivial) split prior is one of the steps whose log-det is counted
    assert sum(isinstance(m, SplitPrior) for m in glow.modules()) == 1


def test_glow_rejects_sizes_not_divisible() -> None:
    with pytest.raises(ShapeError, match=r"2\^3 = 8.*28×28.*num_levels at most 2"):
        Glow((1, 28, 28), num_levels=3, hidden=4)
    with pytest.raises(ShapeError, match="images"):
        Glow((16,), hidden=4)
    with pytest.raises(ConfigError, match="num_steps"):
        Glow((1, 8, 8), num_steps=0)


# -- presets and training -----------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "shape"), [("glow-mnist", (1, 28, 28)), ("glow-celeba32", (3, 32, 32))])
def test_presets_build(preset: str, shape: tuple[int, ...], registered: Any) -> None:
    text = resources.files("flowkit.presets").joinpath(f"{preset}.toml").read_text("utf-8")
    table = tomllib.loads(text)
    assert table["transform"]["name"] == "glow"
    assert table["data"]["preprocess"] == "center"
    params = {k: v for k, v in table["transform"].items() if k != "name"}
    kwargs = validate_parameters(
        Glow, params, "[transform] glow", {"event_shape": shape, "num_classes": None}
    )
    glow = Glow(**kwargs)
    assert glow.output_shape == (math.prod(shape),)
    config = flowkit.load_config(preset)
    assert config["transform"]["num_steps"] == params["num_steps"]


@pytest.mark.slow
def test_glow_trains_end_to_end(tmp_path: Path, registered: Any) -> None:
    config = flowkit.load_config(
        None,
        [
            "transform.hidden=8",
            "transform.num_steps=2",
            "transform.num_levels=2",
            "train.steps=5",
            "data.preprocess=center",
        ],
        transform="glow",
        data="digits",
    )
    summary = flowkit.train(config, tmp_path / "run", progress=False)
    assert summary["status"] == "completed" and summary["steps"] == 5
    assert math.isfinite(summary["test_bpd"])
    run = flowkit.load_run(tmp_path / "run")
    norms = [m for m in run.model.modules() if isinstance(m, ActNorm)]
    assert norms and all(bool(m.initialized) for m in norms)
    assert isinstance(run.model.transform, nn.Module)


def test_default_levels_fit_the_image_size() -> None:
    from flowkit.plugins.transforms.glow import Glow

    assert Glow((1, 28, 28), num_steps=1, hidden=4).num_levels == 2  # 28 = 4 · 7
    assert Glow((3, 32, 32), num_steps=1, hidden=4).num_levels == 3  # the paper's L


# -- samples that explode (issue 17): bounded inverse scales -------------------------------------
def _old_sigmoid_scale(raw: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.logsigmoid(raw + SCALE_OFFSET)


def _old_exp_scale(raw: torch.Tensor) -> torch.Tensor:
    return raw


def _unbounded_glow_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scales before the fix: ``log sigmoid(r + 2)`` and ``log σ = r``, both unbounded
    (module-level functions, so that the pickle check still passes)."""
    from flowkit.plugins import elementwise

    monkeypatch.setitem(elementwise.SCALES, "sigmoid", (_old_sigmoid_scale, {}, False))
    monkeypatch.setitem(elementwise.SCALES, "capped-exp", (_old_exp_scale, {}, True))


def _perturbed_glow(seed: int) -> Glow:
    """A 2-level Glow on 4×8×8 after actnorm's init, every parameter moved by 0.1·N(0, 1)."""
    torch.manual_seed(seed)
    glow = Glow((4, 8, 8), num_levels=2, num_steps=2, hidden=8)
    glow(torch.randn(64, 4, 8, 8))
    perturb_parameters(glow, 0.1, generator=torch.Generator().manual_seed(seed))
    return glow.eval()


def _nonfinite_share(glow: Glow, dtype: torch.dtype, seed: int) -> float:
    model = glow.to(dtype)
    z = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        x, logdet = model.inverse(z)
    bad = ~(torch.isfinite(x).flatten(1).all(1) & torch.isfinite(logdet))
    return float(bad.double().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverting_prior_samples_of_a_perturbed_glow_stays_finite(dtype: torch.dtype) -> None:
    """Issue 17: the unbounded scales gave 25-100% non-finite samples here, the capped ones none."""
    for seed in range(3):
        assert _nonfinite_share(_perturbed_glow(seed), dtype, seed) == 0.0


def test_the_unbounded_scales_explode_on_the_same_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The regression test above fails without the fix (the scales of the old code)."""
    _unbounded_glow_scales(monkeypatch)
    shares = [_nonfinite_share(_perturbed_glow(seed), torch.float64, seed) for seed in range(3)]
    assert min(shares) > 0.2, shares


def test_the_conformance_check_catches_the_unbounded_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """``prior-inverse`` (flowkit.testing) fails on Glow's conformance configuration without the
    caps, and passes with them."""
    from flowkit.testing import check_plugin

    params = {"num_levels": 2, "num_steps": 1, "hidden": 4, "lu": True}
    check_plugin("glow", (1, 8, 8), params)
    _unbounded_glow_scales(monkeypatch)
    with pytest.raises(AssertionError, match=r"\[glow\] prior-inverse check failed.*NaN or inf"):
        check_plugin("glow", (1, 8, 8), params)


def test_soft_cap_formula() -> None:
    from flowkit.plugins.elementwise import SCALE_CAP, SCALE_KNEE, soft_cap

    assert (SCALE_KNEE, SCALE_CAP) == (4.0, 6.0)
    t = torch.linspace(-50.0, 4.0, 1001, dtype=torch.float64)
    assert torch.equal(soft_cap(t), t)  # unchanged up to the knee, bit for bit
    above = torch.tensor([4.5, 5.0, 8.0, 1e3, 1e30, math.inf], dtype=torch.float64)
    torch.testing.assert_close(soft_cap(above), 4.0 + 2.0 * torch.tanh((above - 4.0) / 2.0))
    assert bool((soft_cap(above) <= 6.0).all())  # 6 itself only where tanh rounds to 1
    t = torch.linspace(-10.0, 40.0, 5001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(soft_cap(t).sum(), t)
    assert bool((grad > 0).all()) and bool((grad <= 1).all())  # increasing, slope 1 up to the knee
    at_knee = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    assert float(torch.autograd.grad(soft_cap(at_knee).sum(), at_knee)[0]) == 1.0


def _forced(module: Transform, channel_bias: dict[int, float]) -> Transform:
    """``module`` whose zero-initialised output conv has weight 0 and the given per-channel bias
    (output channels of the interleaved layout: even = shift/mean, odd = raw scale)."""
    out = module.net.out if hasattr(module.net, "out") else module.net
    conv = out.conv
    with torch.no_grad():
        conv.weight.zero_()
        for channel, value in channel_bias.items():
            conv.bias[channel] = value
    return module


def test_glow_coupling_inverse_gain_is_capped_and_mild_scales_are_glows() -> None:
    coupling = GlowCoupling((4, 3, 3), hidden=8).double()
    y = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    # raw scale r = −1000 in channel 0 of x_b, r = −3 (s = sigmoid(−1), log s ≈ −1.31) in channel 1
    _forced(coupling, {1: -1000.0, 3: -3.0})
    with torch.no_grad():
        x, logdet_inv = coupling.inverse(y)
    gain = (x[:, 2:] / y[:, 2:]).abs()
    assert math.exp(5.99) < float(gain[:, 0].min()) <= float(gain[:, 0].max()) <= math.exp(6.0) * (1 + 1e-12)
    mild = 1 / torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64))  # Glow's 1/s, unchanged
    torch.testing.assert_close(gain[:, 1], mild.expand_as(gain[:, 1]))
    back, logdet = coupling(x)
    torch.testing.assert_close(back, y)
    torch.testing.assert_close(logdet, -logdet_inv)


def test_split_prior_sigma_is_capped_and_mild_sigmas_are_glows() -> None:
    split = SplitPrior((4, 2, 2)).double()
    # log σ raw r = +1000 for z's channel 0 (capped below 6), r = 1.5 for channel 1 (unchanged)
    _forced(split, {1: 1000.0, 3: 1.5})
    with torch.no_grad():
        split.net.logs.zero_()
    eps = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        z, _ = split.inverse(eps)  # sampling: z = μ + σ ε, μ = 0 here
    ratio = (z[:, 2:] / eps[:, 2:]).abs()
    assert (
        math.exp(5.99) < float(ratio[:, 0].min()) <= float(ratio[:, 0].max()) <= math.exp(6.0) * (1 + 1e-12)
    )
    torch.testing.assert_close(ratio[:, 1], torch.full_like(ratio[:, 1], math.exp(1.5)))
