"""scikit-learn's bundled 8×8 handwritten digits: a tiny image set that needs no download.

1797 grey-scale images of 8×8 pixels with values ``0..16`` (Alpaydin & Kaynak 1998, "Optical
Recognition of Handwritten Digits", UCI Machine Learning Repository), shipped inside the
scikit-learn wheel as ``sklearn/datasets/data/digits.csv.gz``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError
from flowkit.params import Range, Seed, checked

LEVELS = 17  # pixel values 0..16


@checked
def digits(
    *,
    test_fraction: Annotated[float, Range(0, 1, min_inclusive=False, max_inclusive=False)] = 0.15,
    seed: Seed = 0,
) -> DataSplits:
    """scikit-learn's 8×8 handwritten digits (1797 images, 17 grey levels, 10 classes).

    Pixels ``k ∈ {0, …, 16}`` are stored as ``k / 17`` (``levels = 17``), shape ``(N, 1, 8, 8)``;
    the split into train and test is stratified by class and drawn from ``seed``
    (Alpaydin & Kaynak 1998, "Optical Recognition of Handwritten Digits", UCI repository).

    References:

    * Alpaydin & Kaynak 1998, "Optical Recognition of Handwritten Digits", UCI Machine Learning Repository.
    * Pedregosa et al. 2011, "Scikit-learn: Machine Learning in Python", Journal of Machine Learning Research
      12.

    Arguments:

    * ``test_fraction`` (float in (0, 1), default 0.15): the share of the images in the test split.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> from flowkit.plugins.datasets.digits import digits
        >>> data = digits(test_fraction=0.15, seed=0)
        >>> data.train.shape, data.test.shape, data.levels, data.num_classes
        (torch.Size([1527, 1, 8, 8]), torch.Size([270, 1, 8, 8]), 17, 10)
        >>> round(data.train.max().item() * 17)  # pixel k is stored as k / 17
        16
    """
    # imported here so that `flowkit list` does not pay for importing scikit-learn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    pixels, labels = load_digits(return_X_y=True)
    images = (np.rint(pixels).astype(np.float32) / LEVELS).reshape(-1, 1, 8, 8)
    labels = labels.astype(np.int64)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            images,
            labels,
            test_size=test_fraction,
            stratify=labels,
            random_state=seed % 2**32,
        )
    except ValueError as exc:  # a fraction too small or too large to hold every class
        raise ConfigError(
            f"[dataset] digits test_fraction={test_fraction} cannot be split stratified over "
            f"10 classes of 1797 images ({exc}); use a value around 0.05-0.5"
        ) from exc
    return DataSplits(
        name="digits",
        train=torch.from_numpy(np.ascontiguousarray(x_train)),
        test=torch.from_numpy(np.ascontiguousarray(x_test)),
        train_labels=torch.from_numpy(np.ascontiguousarray(y_train)),
        test_labels=torch.from_numpy(np.ascontiguousarray(y_test)),
        levels=LEVELS,
        num_classes=10,
        default_preprocess="logit",
        info={"test_fraction": test_fraction, "seed": seed, "source": "sklearn.datasets"},
    )
