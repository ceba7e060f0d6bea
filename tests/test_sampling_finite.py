"""Samples that explode are reported, never returned silently (issue 17).

* :func:`flowkit.testing.check_prior_inverse` (the ``prior-inverse`` conformance check) fails a
  transform whose inverse overflows on N(0, I) latents once its parameters are perturbed, and
  passes one whose inverse is bounded; ``tests/plugins/test_glow.py`` shows that it runs inside
  ``check_plugin`` and catches Glow's former unbounded scales.
* :meth:`flowkit.model.Flow.sample` warns with the share of non-finite samples and returns them as
  NaN instead of clamping ``±inf`` into the data's domain.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from flowkit.data.preprocess import Center, Identity
from flowkit.model import Flow, NonFiniteSamplesWarning
from flowkit.plugins.priors.gaussian import StandardGaussian
from flowkit.testing import CHECKS, check_prior_inverse
from flowkit.transform import Shape, Transform


class ExpInverse(Transform):
    """``y = log(x) / r`` on ``x > 0`` (forward), ``x = exp(r·y)`` (inverse), with
    ``r = 100·e^{−θ}``, or ``sigmoid(θ)`` when ``bounded``: the unbounded inverse overflows once
    ``r·y`` passes ~88 (float32) or ~709 (float64)."""

    def __init__(self, event_shape: Shape, *, bounded: bool = False) -> None:
        super().__init__(event_shape)
        self.log_a = nn.Parameter(torch.zeros(()))
        self.bounded = bounded

    def _rate(self) -> Tensor:
        """``1/a``: 100·e^{−log a} (the inverse overflows for |y| ≳ 0.9) or, bounded, in (0, 1)."""
        return torch.sigmoid(self.log_a) if self.bounded else 100.0 * torch.exp(-self.log_a)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = torch.log(x.abs() + 1e-30) / self._rate()
        return y, -(torch.log(x.abs() + 1e-30) + torch.log(self._rate())).flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.exp(y * self._rate())
        return x, (y * self._rate() + torch.log(self._rate())).flatten(1).sum(1)


def test_prior_inverse_is_a_conformance_check() -> None:
    assert "prior-inverse" in CHECKS


def test_prior_inverse_fails_an_overflowing_inverse_and_names_the_share() -> None:
    module = ExpInverse((3,))
    with pytest.raises(AssertionError) as info:
        check_prior_inverse(module, name="exp-toy", seed=0)
    message = str(info.value)
    assert message.startswith("[exp-toy] prior-inverse check failed for input shape (32, 3) (float32")
    assert "N(0, I) latents gave" in message and "%" in message and "NaN or inf" in message


def test_prior_inverse_passes_a_bounded_inverse_in_both_dtypes() -> None:
    check_prior_inverse(ExpInverse((3,), bounded=True), name="bounded-toy", seed=0)


def test_prior_inverse_perturbs_a_copy_and_is_seeded() -> None:
    module = ExpInverse((3,), bounded=True)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    check_prior_inverse(module, seed=3)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


# -- Flow.sample ---------------------------------------------------------------------------------
class _Overflow(Transform):
    """Identity forward; the inverse turns latents whose first entry is positive into ``+inf``."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        blown = (y[:, :1] > 0).expand_as(y)
        return torch.where(blown, torch.full_like(y, math.inf), y), self.zero_logdet(y)


@pytest.mark.parametrize("preprocess", [Identity, Center])
def test_sample_warns_with_the_nonfinite_share_and_never_clamps_it(preprocess: type[Transform]) -> None:
    torch.manual_seed(0)
    model = Flow(_Overflow((4,)), StandardGaussian((4,)), preprocess((4,)))
    with pytest.warns(NonFiniteSamplesWarning, match=r"Flow.sample: \d+ of 200 samples \(\d+\.\d%\)"):
        x = model.sample(200)
    bad = ~torch.isfinite(x).all(1)
    assert 0 < int(bad.sum()) < 200  # about half, and none of them clamped to a valid value
    if preprocess is Center:  # the domain clamp applies to the finite samples only
        assert bool(((x[~bad] >= 0) & (x[~bad] <= 1)).all())
    with pytest.warns(NonFiniteSamplesWarning, match="Flow.sample_and_log_prob"):
        model.sample_and_log_prob(50)


def test_sample_is_silent_when_finite_and_the_warning_can_be_an_error() -> None:
    model = Flow(Identity((4,)), StandardGaussian((4,)), Center((4,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = model.sample(100)
    assert bool(((x >= 0) & (x <= 1)).all())
    broken = Flow(_Overflow((4,)), StandardGaussian((4,)), Identity((4,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteSamplesWarning)
        with pytest.raises(NonFiniteSamplesWarning):
            broken.sample(100)
