"""The ``celeba`` dataset: crop and resize, the decoded-array cache, and its error paths."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError, DataError
from flowkit.registry import datasets

celeba_module = importlib.import_module("flowkit.plugins.datasets.celeba")
FOLDER = "celeba_align_first10k_89x109"
N_IMAGES = 6


def colour(i: int) -> tuple[int, int, int]:
    return (30 * i + 20, 100, 220 - 25 * i)


def face(i: int) -> Image.Image:
    """89×109 image: white outside rows 10-98, one flat colour inside (the square crop)."""
    array = np.full((109, 89, 3), 255, dtype=np.uint8)
    array[10:99] = colour(i)
    return Image.fromarray(array)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def good_members(n: int = N_IMAGES) -> dict[str, bytes]:
    return {f"{FOLDER}/{i:06d}.jpg": jpeg(face(i)) for i in range(1, n + 1)}


@pytest.fixture(autouse=True)
def _registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the plugin at runtime and keep the cache inside the test's folder."""
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    datasets.register("celeba", celeba_module.celeba)
    yield
    datasets.unregister("celeba")


@pytest.fixture
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with a small fake zip; the module's md5 constant is patched to match."""
    md5 = write_zip(tmp_path / "data" / "celeba" / celeba_module.ZIP_NAME, good_members())
    monkeypatch.setattr(celeba_module, "ZIP_MD5", md5)
    return tmp_path / "data"


def build(data_dir: Path | None, **params: object) -> DataSplits:
    return datasets.build("celeba", params, injected={"data_dir": data_dir, "seed": 0})


# -- crop, resize, splits ----------------------------------------------------------------------


def test_crop_resize_and_splits(fake_data: Path) -> None:
    data = build(fake_data, size=8, n_test=2)
    assert data.train.shape == (4, 3, 8, 8) and data.test.shape == (2, 3, 8, 8)
    assert data.train.dtype == data.test.dtype == torch.float32
    assert data.levels == 256 and data.num_classes is None and data.train_labels is None
    assert data.default_preprocess == "logit" and data.meta.shape == (3, 8, 8)
    k = data.train * 256
    assert (k == k.round()).all() and data.train.min() >= 0 and data.train.max() < 1
    # the crop keeps only the flat-coloured rows 10-98: no white border leaks in
    for split, first in ((data.train, 1), (data.test, 5)):
        for j, image in enumerate(split):
            expected = np.array(colour(first + j), dtype=np.float32)[:, None, None]
            assert np.abs(image.numpy() * 256 - expected).max() <= 4, first + j
    # n_train takes the first images; the test split is always the last n_test
    few = build(fake_data, size=8, n_train=2, n_test=2)
    assert few.train.shape[0] == 2 and np.array_equal(few.train, data.train[:2])
    assert np.array_equal(few.test, data.test)


def test_resize_uses_the_box_filter_on_the_centre_square(fake_data: Path) -> None:
    data = build(fake_data, size=5, n_test=1)
    with zipfile.ZipFile(fake_data / "celeba" / celeba_module.ZIP_NAME) as archive:
        image = Image.open(io.BytesIO(archive.read(f"{FOLDER}/000001.jpg"))).convert("RGB")
    expected = np.asarray(image.crop((0, 10, 89, 99)).resize((5, 5), Image.Resampling.BOX))
    assert np.array_equal(data.train[0].numpy() * 256, expected.transpose(2, 0, 1))


# -- the cache -----------------------------------------------------------------------------------


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("celeba-*"))


def test_cache_is_written_and_reused(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(fake_data, size=8, n_test=2)
    files = cache_files(tmp_path)
    assert [f.suffix for f in files] == [".json", ".npy"]
    assert celeba_module.ZIP_MD5 in files[0].name and "8px" in files[0].name
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temp files left behind

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(celeba_module, "decode_zip", no_decoding)
    again = build(fake_data, size=8, n_test=2)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.test, again.test)
    with pytest.raises(AssertionError, match="cache"):  # another size is another cache entry
        build(fake_data, size=4, n_test=2)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-record", "other-record"])
def test_corrupt_cache_is_rebuilt(fake_data: Path, tmp_path: Path, damage: str) -> None:
    first = build(fake_data, size=8, n_test=2)
    record, array = cache_files(tmp_path)
    raw = bytearray(array.read_bytes())
    if damage == "flip":  # same size, one pixel changed
        raw[-1] ^= 0xFF
        array.write_bytes(bytes(raw))
    elif damage == "truncate":
        array.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "no-record":
        record.unlink()
    else:
        record.write_text(record.read_text().replace('"size": 8', '"size": 9'))
    with pytest.warns(UserWarning, match="rebuilding the CelebA cache"):
        again = build(fake_data, size=8, n_test=2)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.test, again.test)
    rebuilt = json.loads(record.read_text())
    assert rebuilt["md5"] == hashlib.md5(array.read_bytes(), usedforsecurity=False).hexdigest()
    with warnings.catch_warnings():  # the rebuilt cache is trusted again: no warning
        warnings.simplefilter("error")
        build(fake_data, size=8, n_test=2)


def test_unwritable_cache_only_warns(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FLOWKIT_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="FLOWKIT_CACHE"):
        data = build(fake_data, size=8, n_test=2)
    assert data.train.shape == (4, 3, 8, 8)


# -- error paths -----------------------------------------------------------------------------------


def test_missing_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWKIT_DATA", raising=False)
    with pytest.raises(DataError, match="no data folder is set") as info:
        build(None)
    assert "celeba/celeba_align_first10k_89x109.zip" in str(info.value)
    with pytest.raises(DataError, match="FLOWKIT_DATA") as info:
        build(tmp_path)
    assert str(tmp_path / "celeba") in str(info.value)


def test_missing_or_wrong_zip(tmp_path: Path) -> None:
    (tmp_path / "celeba").mkdir()
    with pytest.raises(DataError, match=f"{celeba_module.ZIP_NAME}: missing"):
        build(tmp_path)
    md5 = write_zip(tmp_path / "celeba" / celeba_module.ZIP_NAME, good_members(2))
    with pytest.raises(DataError, match="md5 mismatch") as info:
        build(tmp_path)
    message = str(info.value)
    assert "79b637f2207e5eff602d9eed95086beb" in message and md5 in message
    assert str(tmp_path / "celeba") in message and "--data-dir" in message


@pytest.mark.parametrize(
    "members, match",
    [
        ({f"{FOLDER}/000001.jpg": b"not a jpeg", f"{FOLDER}/000002.jpg": b""}, "cannot decode"),
        ({f"{FOLDER}/000001.jpg": jpeg(Image.new("RGB", (64, 64)))}, "is 64x64 pixels"),
        ({f"{FOLDER}/000001.jpg": jpeg(face(1)), f"{FOLDER}/000003.jpg": jpeg(face(3))}, "in order"),
        ({"other/000001.jpg": jpeg(face(1))}, "found 0 numbered images"),
    ],
)
def test_bad_zip_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes], match: str
) -> None:
    md5 = write_zip(tmp_path / "celeba" / celeba_module.ZIP_NAME, members)
    monkeypatch.setattr(celeba_module, "ZIP_MD5", md5)
    with pytest.raises(DataError, match=match):
        build(tmp_path, n_test=1)


def test_not_a_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "celeba" / celeba_module.ZIP_NAME
    path.parent.mkdir()
    path.write_bytes(b"garbage" * 10)
    monkeypatch.setattr(
        celeba_module, "ZIP_MD5", hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    )
    with pytest.raises(DataError, match="not a readable zip"):
        build(tmp_path)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_test": 6}, "n_test=6 leaves no training images"),
        ({"n_test": 2, "n_train": 5}, "n_train=5 is more than the 4"),
        ({"n_test": 0}, "n_test must be at least 1"),
        ({"n_train": 0}, "n_train must be at least 1"),
        ({"size": 0}, "size must be between 1 and 89"),
        ({"size": 128}, "size must be between 1 and 89"),
    ],
)
def test_bad_parameters(fake_data: Path, params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(fake_data, **params)


# -- the real data ---------------------------------------------------------------------------------

REAL_ZIP = Path(os.environ.get("FLOWKIT_DATA") or "/nonexistent") / "celeba" / celeba_module.ZIP_NAME


@pytest.mark.skipif(not REAL_ZIP.is_file(), reason="set FLOWKIT_DATA to a data folder with celeba/")
def test_real_celeba() -> None:
    data = build(None, size=32, n_train=16)
    assert data.train.shape == (16, 3, 32, 32) and data.test.shape == (1000, 3, 32, 32)
    assert data.info["n_train"] == 16 and data.levels == 256
    assert float(data.train.min()) >= 0.0 and float(data.train.max()) < 1.0
    assert 0.2 < float(data.train.mean()) < 0.8 and float(data.train.std()) > 0.1
