"""MNIST and Fashion-MNIST, read from the original gzip IDX files in a data folder.

Both have 60000 training and 10000 test images of 28×28 8-bit grey levels in 10 classes. The four
files live in ``<data_dir>/mnist/`` resp. ``<data_dir>/fashion-mnist/`` under their original
names, and are checked against the md5 sums their authors published before being read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from flowkit.data.base import DataSplits, resolve_data_dir
from flowkit.data.files import DataFile, DatasetFiles, read_idx_gz, require_files
from flowkit.errors import ConfigError, DataError
from flowkit.params import Range, Seed, checked

LEVELS = 256
NUM_CLASSES = 10
#: A number of examples to keep (a seeded class-balanced subset); ``None``: all of them.
Subset = Annotated[int, Range(1, note="unset: all of them")] | None
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def _idx_files(md5s: tuple[str, str, str, str]) -> tuple[DataFile, ...]:
    names = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    return tuple(DataFile(name, md5) for name, md5 in zip(names, md5s, strict=True))


MNIST_FILES = DatasetFiles(
    dataset="mnist",
    folder="mnist",
    files=_idx_files(
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        )
    ),
    source="http://yann.lecun.com/exdb/mnist/",
)

FASHION_MNIST_FILES = DatasetFiles(
    dataset="fashion-mnist",
    folder="fashion-mnist",
    files=_idx_files(
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        )
    ),
    source="https://github.com/zalandoresearch/fashion-mnist",
)


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` examples drawn at random, as evenly spread over classes as possible.

    Examples are shuffled, ranked within their class, and taken in order of rank, so every class
    contributes ``⌊n / C⌋`` or ``⌈n / C⌉`` examples while it has that many.
    """
    order = rng.permutation(labels.shape[0])
    shuffled = labels[order]
    rank = np.empty(order.shape[0], dtype=np.int64)
    for c in np.unique(shuffled):
        members = shuffled == c
        rank[members] = np.arange(int(members.sum()))
    return np.sort(order[np.argsort(rank, kind="stable")[:n]])


def _read_pair(
    spec: DatasetFiles, paths: dict[str, Path], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx_gz(paths[images_name]), read_idx_gz(paths[labels_name])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"dataset {spec.dataset!r}: {images_name} has shape {images.shape} and "
            f"{labels_name} has shape {labels.shape}; expected (N, 28, 28) and (N,). "
            f"Replace them with the original files from {spec.source}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"dataset {spec.dataset!r}: {labels_name} holds labels outside 0..{NUM_CLASSES - 1}. "
            f"Replace it with the original file from {spec.source}."
        )
    return images, labels


def _split(
    images: np.ndarray, labels: np.ndarray, n: int | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if n is not None and n < labels.shape[0]:
        keep = balanced_subset(labels, n, rng)
        images, labels = images[keep], labels[keep]
    x = (images.astype(np.float32) / LEVELS)[:, None]
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(
    spec: DatasetFiles,
    data_dir: Path | None,
    n_train: int | None,
    n_test: int | None,
    seed: int,
) -> DataSplits:
    """Load an MNIST-format dataset described by ``spec`` into a :class:`DataSplits`.

    Pixels ``k ∈ {0, …, 255}`` become ``k / 256`` (``levels = 256``), shape ``(N, 1, 28, 28)``;
    ``n_train``/``n_test`` take a seeded, class-balanced subset (see :func:`balanced_subset`).
    """
    paths = require_files(spec, resolve_data_dir(data_dir))
    train_images, train_labels = _read_pair(spec, paths, TRAIN_IMAGES, TRAIN_LABELS)
    test_images, test_labels = _read_pair(spec, paths, TEST_IMAGES, TEST_LABELS)
    for key, n, total in (
        ("n_train", n_train, train_labels.shape[0]),
        ("n_test", n_test, test_labels.shape[0]),
    ):
        if n is not None and n > total:
            raise ConfigError(
                f"[dataset] {spec.dataset} {key}={n} is more than the {total} examples "
                f"available; use at most {total}, or leave it unset for all of them"
            )
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    train, y_train = _split(train_images, train_labels, n_train, train_rng)
    test, y_test = _split(test_images, test_labels, n_test, test_rng)
    return DataSplits(
        name=spec.dataset,
        train=train,
        test=test,
        train_labels=y_train,
        test_labels=y_test,
        levels=LEVELS,
        num_classes=NUM_CLASSES,
        default_preprocess="logit",
        info={
            "folder": str(paths[TRAIN_IMAGES].parent),
            "source": spec.source,
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
        },
    )


@checked
def mnist(
    *,
    data_dir: Path | None = None,
    n_train: Subset = None,
    n_test: Subset = None,
    seed: Seed = 0,
) -> DataSplits:
    """MNIST handwritten digits, 28×28, 256 grey levels, 10 classes (from the data folder).

    Reads the four original gzip IDX files from ``<data_dir>/mnist/`` after checking their md5
    sums; pixels ``k`` become ``k / 256``. ``n_train``/``n_test`` take a seeded class-balanced
    subset for quick runs (LeCun et al. 1998, "Gradient-based learning applied to document
    recognition", Proc. IEEE 86(11), §III.A).

    Pixels: ``x = k / 256`` for grey level ``k ∈ {0, …, 255}``; labels ``y ∈ {0, …, 9}``.

    References:

    * LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document Recognition",
      Proceedings of the IEEE 86(11).

    Arguments:

    * ``data_dir`` (injected): the data folder; ``None``: ``$FLOWKIT_DATA``. flowkit sets it from
      ``data.data_dir``.
    * ``n_train`` (int ≥ 1 | None, default None): a seeded class-balanced subset of the training images;
      ``None``: all 60000.
    * ``n_test`` (int ≥ 1 | None, default None): a seeded class-balanced subset of the test images; ``None``:
      all 10000.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import tempfile
        >>> from flowkit.plugins.datasets.mnist import MNIST_FILES, mnist
        >>> MNIST_FILES.folder, [f.name for f in MNIST_FILES.files][:2]  # in <data_dir>/mnist/
        ('mnist', ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'])
        >>> with tempfile.TemporaryDirectory() as empty:  # doctest: +ELLIPSIS
        ...     mnist(data_dir=empty, n_train=1000)
        Traceback (most recent call last):
            ...
        flowkit.errors.DataError: dataset 'mnist': folder .../mnist does not exist ...
    """
    return load_idx_dataset(MNIST_FILES, data_dir, n_train, n_test, seed)


@checked
def fashion_mnist(
    *,
    data_dir: Path | None = None,
    n_train: Subset = None,
    n_test: Subset = None,
    seed: Seed = 0,
) -> DataSplits:
    """Fashion-MNIST clothing images, 28×28, 256 grey levels, 10 classes (from the data folder).

    Reads the four original gzip IDX files from ``<data_dir>/fashion-mnist/`` after checking
    their md5 sums; pixels ``k`` become ``k / 256``. ``n_train``/``n_test`` take a seeded
    class-balanced subset for quick runs (Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel
    Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, §2).

    Pixels: ``x = k / 256`` for grey level ``k ∈ {0, …, 255}``; labels ``y ∈ {0, …, 9}``.

    References:

    * Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
      Algorithms", arXiv:1708.07747.

    Arguments:

    * ``data_dir`` (injected): the data folder; ``None``: ``$FLOWKIT_DATA``. flowkit sets it from
      ``data.data_dir``.
    * ``n_train`` (int ≥ 1 | None, default None): a seeded class-balanced subset of the training images;
      ``None``: all 60000.
    * ``n_test`` (int ≥ 1 | None, default None): a seeded class-balanced subset of the test images; ``None``:
      all 10000.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import tempfile
        >>> from flowkit.plugins.datasets.mnist import FASHION_MNIST_FILES, fashion_mnist
        >>> FASHION_MNIST_FILES.folder, len(FASHION_MNIST_FILES.files)  # four IDX files
        ('fashion-mnist', 4)
        >>> with tempfile.TemporaryDirectory() as empty:  # doctest: +ELLIPSIS
        ...     fashion_mnist(data_dir=empty)
        Traceback (most recent call last):
            ...
        flowkit.errors.DataError: dataset 'fashion-mnist': folder .../fashion-mnist does not exist ...
    """
    return load_idx_dataset(FASHION_MNIST_FILES, data_dir, n_train, n_test, seed)
