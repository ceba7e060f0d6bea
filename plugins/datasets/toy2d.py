"""The classic 2-D toy densities of the normalizing-flow literature.

Moons, two concentric circles, a ring of 8 Gaussians, a checkerboard, a pinwheel and two
spirals, as used by Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable
Reversible Generative Models", §5.1 and Fig. 2, and by later work on 2-D density estimation.
Every set is scaled so that almost all points lie within ``[-4, 4]²``; samples are drawn with a
numpy :class:`~numpy.random.Generator`, train and test from independent streams of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import numpy as np
import torch

from flowkit.data.base import DataSplits
from flowkit.params import Range, Seed, checked

Sampler = Callable[[np.random.Generator, int, float], np.ndarray]
#: A number of examples.
Size = Annotated[int, Range(1)]
#: The standard deviation of the Gaussian noise added to the points.
Noise = Annotated[float, Range(0)]

_REFERENCE = (
    "Grathwohl et al. 2019, FFJORD: Free-form Continuous Dynamics for Scalable Reversible "
    "Generative Models, §5.1"
)


def toy_splits(name: str, sampler: Sampler, n_train: int, n_test: int, noise: float, seed: int) -> DataSplits:
    """Draw train and test sets of a toy density from independent streams of ``seed``.

    The sizes, the noise and the seed are checked by the public datasets' declared ranges.
    """
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    train = sampler(train_rng, n_train, noise).astype(np.float32)
    test = sampler(test_rng, n_test, noise).astype(np.float32)
    return DataSplits(
        name=name,
        train=torch.from_numpy(train),
        test=torch.from_numpy(test),
        levels=None,
        num_classes=None,
        default_preprocess="none",
        info={"noise": noise, "seed": seed, "reference": _REFERENCE},
    )


def _sample_moons(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    t = rng.uniform(0.0, math.pi, n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return 2.0 * points + np.array([-1.0, -0.2])


def _sample_circles(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    t = rng.uniform(0.0, 2.0 * math.pi, n)
    radius = np.where(rng.random(n) < 0.5, 0.5, 1.0)
    points = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return 3.0 * (points + noise * rng.standard_normal((n, 2)))


def _sample_eight_gaussians(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    angle = rng.integers(0, 8, n) * (math.pi / 4.0)
    centres = 2.0 * math.sqrt(2.0) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + noise * rng.standard_normal((n, 2))


def _sample_checkerboard(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    x = rng.uniform(-2.0, 2.0, n)
    # y in [0, 1) or [-2, -1), shifted up by one in every other column: 8 squares out of 16
    y = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x) % 2
    return 2.0 * np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))


def _sample_pinwheel(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    arms, radial_std, rate = 5, 0.3, 0.25
    radial = 1.0 + radial_std * rng.standard_normal(n)
    tangential = noise * rng.standard_normal(n)
    angle = rng.integers(0, arms, n) * (2.0 * math.pi / arms) + rate * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack([radial * cos - tangential * sin, radial * sin + tangential * cos], axis=1)


def _sample_spirals(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    t = np.sqrt(rng.random(n)) * 3.0 * math.pi  # up to 540 degrees, uniform along the area
    arm = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + 0.5 * rng.random((n, 2))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]
    return sign * arm / 3.0 + noise * rng.standard_normal((n, 2))


@checked
def moons(*, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.1, seed: Seed = 0) -> DataSplits:
    """Two interleaving half circles ("moons"), 2-D.

    Points ``(cos t, sin t)`` and ``(1 − cos t, 1/2 − sin t)``, ``t ~ U[0, π]``, plus Gaussian
    noise of std ``noise``, then mapped by ``2 p + (−1, −0.2)`` (Grathwohl et al. 2019, FFJORD,
    §5.1, as in scikit-learn's ``make_moons``).

    References:

    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.
    * Pedregosa et al. 2011, "Scikit-learn: Machine Learning in Python", Journal of Machine Learning Research
      12.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.1): standard deviation of the Gaussian noise added to every point.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.toy2d import moons
        >>> data = moons(n_train=1000, n_test=200, seed=0)
        >>> data.train.shape, data.test.shape, data.num_classes
        (torch.Size([1000, 2]), torch.Size([200, 2]), None)
        >>> torch.equal(moons(n_train=1000, n_test=200, seed=0).train, data.train)  # seeded
        True
    """
    return toy_splits("moons", _sample_moons, n_train, n_test, noise, seed)


@checked
def circles(*, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.08, seed: Seed = 0) -> DataSplits:
    """Two concentric circles of radii 3 and 1.5, 2-D.

    Points on circles of radius 1 and 1/2 (equal odds) plus Gaussian noise of std ``noise``,
    all scaled by 3 (Grathwohl et al. 2019, FFJORD, §5.1, as in scikit-learn's
    ``make_circles`` with ``factor=0.5``).

    References:

    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.
    * Pedregosa et al. 2011, "Scikit-learn: Machine Learning in Python", Journal of Machine Learning Research
      12.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.08): standard deviation of the Gaussian noise added to every point.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.toy2d import circles
        >>> data = circles(n_train=1000, n_test=200, noise=0.0, seed=0)
        >>> data.train.shape, data.test.shape
        (torch.Size([1000, 2]), torch.Size([200, 2]))
        >>> torch.unique((2 * data.train.norm(dim=1)).round()).tolist()  # radii 1.5 and 3
        [3.0, 6.0]
    """
    return toy_splits("circles", _sample_circles, n_train, n_test, noise, seed)


@checked
def eight_gaussians(
    *, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.35, seed: Seed = 0
) -> DataSplits:
    """A mixture of 8 Gaussians evenly spaced on a circle of radius 2√2, 2-D.

    Centres ``2√2 (cos kπ/4, sin kπ/4)``, ``k = 0..7``, equal weights, isotropic std ``noise``
    (Grathwohl et al. 2019, FFJORD, §5.1: radius 4 and std 0.5, both divided by √2).

    References:

    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.35): standard deviation of the Gaussian noise added to every point.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import math, torch
        >>> from flowkit.plugins.datasets.toy2d import eight_gaussians
        >>> data = eight_gaussians(n_train=1000, n_test=200, noise=0.0, seed=0)
        >>> data.train.shape, data.test.shape
        (torch.Size([1000, 2]), torch.Size([200, 2]))
        >>> torch.allclose(data.train.norm(dim=1), torch.tensor(2 * math.sqrt(2)))  # the centres
        True
    """
    return toy_splits("8gaussians", _sample_eight_gaussians, n_train, n_test, noise, seed)


@checked
def checkerboard(
    *, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.0, seed: Seed = 0
) -> DataSplits:
    """A 4×4 checkerboard on [-4, 4]², uniform on 8 of its 16 squares, 2-D.

    ``x ~ U[-2, 2]``, ``y ~ U[0, 1) − 2b + (⌊x⌋ mod 2)`` with ``b ~ Bernoulli(1/2)``, scaled by
    2, plus optional Gaussian noise of std ``noise`` (Grathwohl et al. 2019, FFJORD, §5.1).

    References:

    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.0): standard deviation of the Gaussian noise added to every point.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.toy2d import checkerboard
        >>> data = checkerboard(n_train=1000, n_test=200, seed=0)
        >>> data.train.shape, data.test.shape
        (torch.Size([1000, 2]), torch.Size([200, 2]))
        >>> data.train.abs().max().item() <= 4  # inside [-4, 4]²
        True
    """
    return toy_splits("checkerboard", _sample_checkerboard, n_train, n_test, noise, seed)


@checked
def pinwheel(*, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.1, seed: Seed = 0) -> DataSplits:
    """A pinwheel of 5 curved arms, 2-D.

    Radius ``r ~ N(1, 0.3²)``, tangential offset ``u ~ N(0, noise²)``, rotated by
    ``2πk/5 + 0.25 eʳ`` for arm ``k`` and scaled by 2 (Johnson et al. 2016, "Composing graphical
    models with neural networks", §6; Grathwohl et al. 2019, FFJORD, §5.1).

    References:

    * Johnson, Duvenaud, Wiltschko, Datta & Adams 2016, "Composing graphical models with neural networks for
      structured representations and fast inference", NeurIPS 2016.
    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.1): std of the tangential offset ``u``.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.toy2d import pinwheel
        >>> data = pinwheel(n_train=1000, n_test=200, seed=0)
        >>> data.train.shape, data.test.shape, data.num_classes
        (torch.Size([1000, 2]), torch.Size([200, 2]), None)
        >>> torch.equal(pinwheel(n_train=1000, n_test=200, seed=0).train, data.train)  # seeded
        True
    """
    return toy_splits("pinwheel", _sample_pinwheel, n_train, n_test, noise, seed)


@checked
def spirals(*, n_train: Size = 20000, n_test: Size = 5000, noise: Noise = 0.1, seed: Seed = 0) -> DataSplits:
    """Two interleaved spirals, 2-D.

    Arm ``(−t cos t, t sin t) + U[0, 1/2)²`` with ``t = 3π √u``, ``u ~ U[0, 1]``, reflected
    through the origin for the second spiral, divided by 3, plus Gaussian noise of std ``noise``
    (Grathwohl et al. 2019, FFJORD, §5.1, "2spirals").

    References:

    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): training examples drawn.
    * ``n_test`` (int ≥ 1, default 5000): test examples drawn.
    * ``noise`` (float ≥ 0, default 0.1): standard deviation of the Gaussian noise added to every point.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.toy2d import spirals
        >>> data = spirals(n_train=1000, n_test=200, seed=0)
        >>> data.train.shape, data.test.shape, data.num_classes
        (torch.Size([1000, 2]), torch.Size([200, 2]), None)
        >>> torch.equal(spirals(n_train=1000, n_test=200, seed=0).train, data.train)  # seeded
        True
    """
    return toy_splits("spirals", _sample_spirals, n_train, n_test, noise, seed)
