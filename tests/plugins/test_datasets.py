"""Tests of the built-in dataset plugins and of checksummed file access (flowkit.data.files)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flowkit.data.base import DataSplits, resolve_data_dir
from flowkit.data.files import (
    DataFile,
    DatasetFiles,
    md5sum,
    read_idx_gz,
    require_files,
    verify_md5,
)
from flowkit.errors import ConfigError, DataError
from flowkit.registry import datasets

TOYS = ["moons", "circles", "8gaussians", "checkerboard", "pinwheel", "spirals"]
# the module behind the `mnist` entry point, to patch its md5 table with fake files' sums
mnist_module = importlib.import_module("flowkit.plugins.datasets.mnist")
IDX_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def build(
    name: str, params: dict[str, object] | None = None, seed: int = 0, data_dir: Path | None = None
) -> DataSplits:
    return datasets.build(name, params or {}, injected={"seed": seed, "data_dir": data_dir})


# -- helpers for fake IDX files -------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Uncompressed IDX bytes of a uint8 array (``magic`` overrides the header's first word)."""
    head = magic if magic is not None else 0x0800 + array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array, magic)))
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with small fake MNIST files; the md5 table is patched to match them."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    arrays = [
        rng.integers(0, 256, (200, 28, 28)),
        np.arange(200) % 10,
        rng.integers(0, 256, (50, 28, 28)),
        np.arange(50) % 10,
    ]
    files = tuple(
        DataFile(name, md5_of(write_idx_gz(folder / name, a))) for name, a in zip(IDX_NAMES, arrays)
    )
    monkeypatch.setattr(
        mnist_module, "MNIST_FILES", dataclasses.replace(mnist_module.MNIST_FILES, files=files)
    )
    return tmp_path


def real_data_dir(folder: str) -> Path:
    root = os.environ.get("FLOWKIT_DATA")
    if not root:
        pytest.skip(
            "FLOWKIT_DATA is not set: point it at a folder holding mnist/ and "
            "fashion-mnist/ with the original IDX files to run this test"
        )
    if not (Path(root) / folder).is_dir():
        pytest.skip(f"$FLOWKIT_DATA ({root}) has no {folder}/ folder")
    return Path(root)


# -- registry ----------------------------------------------------------------------------------


def test_every_builtin_dataset_is_registered_with_a_summary() -> None:
    for name in [*TOYS, "digits", "mnist", "fashion-mnist"]:
        assert name in datasets.names()
        assert datasets.entry(name).summary(), name


# -- 2-D toys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_and_metadata(name: str) -> None:
    data = build(name, {"n_train": 100, "n_test": 30})
    assert data.train.shape == (100, 2) and data.test.shape == (30, 2)
    assert data.train.dtype == torch.float32 and data.test.dtype == torch.float32
    assert data.levels is None and data.num_classes is None
    assert data.train_labels is None and data.test_labels is None
    assert data.default_preprocess == "none"
    assert data.shape == (2,) and not data.is_image


@pytest.mark.parametrize("name", TOYS)
def test_toy_scale(name: str) -> None:
    x = build(name, {"n_train": 4000, "n_test": 10}).train
    assert torch.isfinite(x).all()
    assert x.abs().max() < 5.5
    assert x.std(dim=0).min() > 0.5 and x.std(dim=0).max() < 3.0


@pytest.mark.parametrize("name", TOYS)
def test_toy_determinism(name: str) -> None:
    params = {"n_train": 200, "n_test": 200}
    a, b, c = build(name, params, seed=3), build(name, params, seed=3), build(name, params, seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train, a.test)  # independent streams for train and test


def test_toy_noise_changes_spread() -> None:
    sharp = build("moons", {"n_train": 2000, "noise": 0.0}).train
    blurry = build("moons", {"n_train": 2000, "noise": 0.3}).train
    assert not torch.equal(sharp, blurry)
    # the noiseless moons lie exactly on two circles of radius 2 (after the ×2 scaling)
    p = sharp.double() - torch.tensor([-1.0, -0.2], dtype=torch.float64)
    r_upper = p.norm(dim=1)
    r_lower = (p - torch.tensor([2.0, 1.0], dtype=torch.float64)).norm(dim=1)
    on_circle = torch.minimum((r_upper - 2).abs(), (r_lower - 2).abs())
    assert on_circle.max() < 1e-5


def test_checkerboard_occupies_alternate_squares() -> None:
    x = build("checkerboard", {"n_train": 2000}).train
    col, row = torch.floor(x[:, 0] / 2), torch.floor(x[:, 1] / 2)
    assert x.abs().max() <= 4.0
    parity = (col + row) % 2
    assert (parity == parity[0]).all()


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": -1}, "n_test"),
        ({"noise": -0.1}, "noise"),
        ({"n_train": "many"}, "n_train"),
        ({"nosie": 0.1}, "noise"),  # misspelt: "did you mean"
        ({"seed": 1}, "seed"),  # injected by flowkit, not settable
    ],
)
def test_toy_bad_parameters(params: dict[str, object], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        build("moons", params)


# -- digits ------------------------------------------------------------------------------------


def test_digits_shapes_levels_and_values() -> None:
    data = build("digits")
    assert data.train.shape[1:] == (1, 8, 8) and data.is_image
    assert data.train.shape[0] + data.test.shape[0] == 1797
    assert abs(data.test.shape[0] - 0.15 * 1797) <= 1
    assert data.train.dtype == torch.float32
    assert data.train_labels is not None and data.test_labels is not None
    assert data.train_labels.dtype == torch.int64
    assert data.levels == 17 and data.num_classes == 10
    assert data.default_preprocess == "logit"
    for x in (data.train, data.test):
        assert x.min() >= 0 and x.max() < 1
        k = x * 17
        assert torch.allclose(k, k.round(), atol=1e-5)
    assert set(data.test_labels.tolist()) == set(range(10))


def test_digits_split_is_stratified_and_disjoint() -> None:
    data = build("digits", {"test_fraction": 0.2})
    assert data.train_labels is not None and data.test_labels is not None
    frac = data.test_labels.bincount(minlength=10).double() / (
        data.test_labels.bincount(minlength=10) + data.train_labels.bincount(minlength=10)
    )
    assert ((frac - 0.2).abs() < 0.02).all()
    train_rows = {tuple(r) for r in data.train.flatten(1).mul(17).round().int().tolist()}
    test_rows = [tuple(r) for r in data.test.flatten(1).mul(17).round().int().tolist()]
    # a handful of digits images are exact duplicates in the source data; almost none overlap
    assert sum(r in train_rows for r in test_rows) < 5


def test_digits_determinism() -> None:
    a, b, c = build("digits", seed=1), build("digits", seed=1), build("digits", seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test, c.test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 0.001])
def test_digits_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        build("digits", {"test_fraction": fraction})


# -- files: md5 and locating -------------------------------------------------------------------


def test_verify_md5(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    digest = md5_of(path)
    verify_md5(path, digest)
    assert md5sum(path) == digest
    with pytest.raises(DataError, match=f"expected md5 {'0' * 32}, got {digest}"):
        verify_md5(path, "0" * 32)
    with pytest.raises(DataError, match="does not exist"):
        verify_md5(tmp_path / "nope", digest)


def test_md5_cache_sees_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = md5sum(path)
    path.write_bytes(b"three")
    assert md5sum(path) != first


SPEC = DatasetFiles(
    dataset="toyset",
    folder="toyset",
    files=(
        DataFile("a.gz", hashlib.md5(b"a", usedforsecurity=False).hexdigest()),
        DataFile("b.gz", hashlib.md5(b"b", usedforsecurity=False).hexdigest()),
    ),
    source="https://example.org/toyset",
)


def assert_fix_hint(message: str, spec: DatasetFiles = SPEC) -> None:
    assert "--data-dir" in message and "FLOWKIT_DATA" in message
    assert spec.source in message
    for f in spec.files:
        assert f"{spec.folder}/{f.name}" in message


def test_require_files_without_data_dir() -> None:
    with pytest.raises(DataError) as info:
        require_files(SPEC, None)
    message = str(info.value)
    assert "no data folder is set" in message and "'toyset'" in message
    assert_fix_hint(message)


def test_require_files_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        require_files(SPEC, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "toyset") in message and "does not exist" in message
    assert_fix_hint(message)


def test_require_files_hints_when_pointed_at_the_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(b"a")
    (tmp_path / "b.gz").write_bytes(b"b")
    with pytest.raises(DataError, match="parent folder"):
        require_files(SPEC, tmp_path)


def test_require_files_lists_missing_and_corrupt_files(tmp_path: Path) -> None:
    folder = tmp_path / "toyset"
    folder.mkdir()
    (folder / "b.gz").write_bytes(b"not b")
    with pytest.raises(DataError) as info:
        require_files(SPEC, tmp_path)
    message = str(info.value)
    assert str(folder) in message and "'toyset'" in message
    assert "a.gz: missing" in message
    assert f"b.gz: md5 mismatch (expected {SPEC.files[1].md5}, got {md5_of(folder / 'b.gz')})" in message
    assert_fix_hint(message)


def test_require_files_success(tmp_path: Path) -> None:
    folder = tmp_path / "toyset"
    folder.mkdir()
    (folder / "a.gz").write_bytes(b"a")
    (folder / "b.gz").write_bytes(b"b")
    assert require_files(SPEC, str(tmp_path)) == {"a.gz": folder / "a.gz", "b.gz": folder / "b.gz"}


# -- files: IDX reader -------------------------------------------------------------------------


def test_read_idx_gz_round_trip_and_cache(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 5)).astype(np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    path_i = write_idx_gz(tmp_path / "i.gz", images)
    path_l = write_idx_gz(tmp_path / "l.gz", labels)
    assert int.from_bytes(gzip.decompress(path_i.read_bytes())[:4], "big") == 2051
    assert int.from_bytes(gzip.decompress(path_l.read_bytes())[:4], "big") == 2049
    got = read_idx_gz(path_i)
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(read_idx_gz(path_l), labels)
    assert read_idx_gz(path_i) is got  # cached
    assert not got.flags.writeable
    write_idx_gz(path_i, images[:3])  # a changed file is read again
    assert read_idx_gz(path_i).shape == (3, 4, 5)


NOISE = np.random.default_rng(1).integers(0, 256, (10, 28, 28))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (gzip.compress(idx_bytes(NOISE))[: -len(NOISE) // 2], "cannot decompress"),
        (b"plain bytes, not gzip at all", "cannot decompress"),
        (gzip.compress(idx_bytes(np.zeros((3, 28, 28)), magic=1234)), "wrong magic number 1234"),
        (gzip.compress(idx_bytes(np.zeros((3, 2, 2)))[:-1]), "truncated"),
        (gzip.compress(idx_bytes(np.zeros(5)) + b"extra"), "truncated or padded"),
        (gzip.compress(b"\x00\x00"), "no IDX header"),
        (gzip.compress(b"\x00\x00\x08\x03\x00\x00"), "header"),
    ],
)
def test_read_idx_gz_corrupt(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_idx_gz(path)
    assert str(path) in str(info.value)


def test_read_idx_gz_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx_gz(tmp_path / "absent.gz")


# -- MNIST plugins on fake files ---------------------------------------------------------------


def test_mnist_on_fake_files(fake_mnist: Path) -> None:
    data = build("mnist", data_dir=fake_mnist)
    assert data.train.shape == (200, 1, 28, 28) and data.test.shape == (50, 1, 28, 28)
    assert data.train.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    assert data.levels == 256 and data.num_classes == 10 and data.default_preprocess == "logit"
    raw = read_idx_gz(fake_mnist / "mnist" / IDX_NAMES[0])
    assert torch.equal(data.train[:, 0] * 256, torch.from_numpy(raw.astype(np.float32)))
    assert data.train.max() < 1


def test_mnist_subset_is_balanced_and_seeded(fake_mnist: Path) -> None:
    params = {"n_train": 100, "n_test": 20}
    a = build("mnist", params, seed=0, data_dir=fake_mnist)
    b = build("mnist", params, seed=0, data_dir=fake_mnist)
    c = build("mnist", params, seed=1, data_dir=fake_mnist)
    assert a.train.shape == (100, 1, 28, 28) and a.test.shape == (20, 1, 28, 28)
    assert a.train_labels.bincount(minlength=10).tolist() == [10] * 10
    assert a.test_labels.bincount(minlength=10).tolist() == [2] * 10
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train, c.train)


def test_mnist_subset_too_large(fake_mnist: Path) -> None:
    with pytest.raises(ConfigError, match="n_train=500 is more than the 200"):
        build("mnist", {"n_train": 500}, data_dir=fake_mnist)
    with pytest.raises(ConfigError, match="n_test"):
        build("mnist", {"n_test": 0}, data_dir=fake_mnist)


def test_mnist_without_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWKIT_DATA", raising=False)
    for name, folder in (("mnist", "mnist"), ("fashion-mnist", "fashion-mnist")):
        with pytest.raises(DataError) as info:
            build(name, data_dir=None)
        message = str(info.value)
        assert "no data folder is set" in message
        assert "--data-dir" in message and "FLOWKIT_DATA" in message
        for file_name in IDX_NAMES:
            assert f"{folder}/{file_name}" in message


def test_mnist_error_messages_name_folder_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion-mnist") in message
    assert "https://github.com/zalandoresearch/fashion-mnist" in message
    assert "--data-dir" in message and "FLOWKIT_DATA" in message

    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / IDX_NAMES[1]).write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        build("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(folder) in message and "http://yann.lecun.com/exdb/mnist/" in message
    for name in (IDX_NAMES[0], IDX_NAMES[2], IDX_NAMES[3]):
        assert f"{name}: missing" in message
    assert (
        f"{IDX_NAMES[1]}: md5 mismatch (expected d53e105ee54ea40749a09fcbcd1e9432, "
        f"got {md5_of(folder / IDX_NAMES[1])})" in message
    )


def test_mnist_corrupt_content_behind_a_matching_md5(
    fake_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_mnist / "mnist"
    # labels that do not match the images' count, with the md5 table updated to accept them
    write_idx_gz(folder / IDX_NAMES[1], np.arange(10) % 10)
    spec = mnist_module.MNIST_FILES
    files = tuple(dataclasses.replace(f, md5=md5_of(folder / f.name)) for f in spec.files)
    monkeypatch.setattr(mnist_module, "MNIST_FILES", dataclasses.replace(spec, files=files))
    with pytest.raises(DataError, match=r"expected \(N, 28, 28\) and \(N,\)"):
        build("mnist", data_dir=fake_mnist)
    # a truncated gzip stream
    (folder / IDX_NAMES[1]).write_bytes(gzip.compress(idx_bytes(np.arange(200) % 10))[:-20])
    files = tuple(dataclasses.replace(f, md5=md5_of(folder / f.name)) for f in spec.files)
    monkeypatch.setattr(mnist_module, "MNIST_FILES", dataclasses.replace(spec, files=files))
    with pytest.raises(DataError, match="cannot decompress"):
        build("mnist", data_dir=fake_mnist)


# -- real MNIST / Fashion-MNIST (need $FLOWKIT_DATA) -------------------------------------------


def test_real_mnist() -> None:
    root = real_data_dir("mnist")
    data = build("mnist", data_dir=resolve_data_dir(None))
    assert resolve_data_dir(None) == root
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train_labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert data.test_labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert data.train.min() == 0 and data.train.max() == 255 / 256
    assert data.levels == 256 and data.num_classes == 10


def test_real_mnist_subset() -> None:
    root = real_data_dir("mnist")
    a = build("mnist", {"n_train": 1000, "n_test": 100}, seed=5, data_dir=root)
    b = build("mnist", {"n_train": 1000, "n_test": 100}, seed=6, data_dir=root)
    assert a.train.shape == (1000, 1, 28, 28) and a.test.shape == (100, 1, 28, 28)
    assert a.train_labels.bincount().tolist() == [100] * 10
    assert not torch.equal(a.train, b.train)


def test_real_fashion_mnist() -> None:
    root = real_data_dir("fashion-mnist")
    data = build("fashion-mnist", data_dir=root)
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.name == "fashion-mnist" and data.default_preprocess == "logit"
