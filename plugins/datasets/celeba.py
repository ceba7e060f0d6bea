"""CelebA faces (first 10,000 aligned images), square-cropped and resized, from the data folder.

The data folder holds ``celeba/celeba_align_first10k_89x109.zip``: images ``000001.jpg`` to
``010000.jpg`` of CelebA's aligned-and-cropped set (``img_align_celeba``) at half resolution,
89×109 pixels, under ``celeba_align_first10k_89x109/`` inside the zip. Each image is cropped to
the square box (left 0, top 10, right 89, bottom 99) — the usual 178×178 centre crop of the
178×218 originals, at half scale — and resized to ``size × size`` with Pillow's ``BOX`` filter.

``BOX`` is area averaging: each output pixel is the coverage-weighted mean of the input pixels
under it. It is the anti-aliased downscale with no overshoot (values stay within the range of
the inputs, so nothing is clipped) and it does not sharpen the JPEG artefacts of the 89-pixel
source, as ``LANCZOS``'s negative lobes would (ringing around edges and 8×8 blocks).

Decoding 10,000 JPEGs takes seconds, so the decoded ``uint8`` array is cached per (zip md5,
size) as ``.npy`` under ``$FLOWKIT_CACHE`` (default ``~/.cache/flowkit``), written atomically
with a JSON sidecar holding its md5; a cache file that fails that check is rebuilt, with a
warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from flowkit.atomic import atomic_write
from flowkit.data.base import DataSplits, cache_dir, resolve_data_dir
from flowkit.data.files import DataFile, DatasetFiles, require_files
from flowkit.errors import ConfigError, DataError
from flowkit.params import Range, checked

ZIP_NAME = "celeba_align_first10k_89x109.zip"
#: md5 of the zip (patched by tests that use a small fake zip)
ZIP_MD5 = "79b637f2207e5eff602d9eed95086beb"
IMAGE_FOLDER = "celeba_align_first10k_89x109"
SOURCE_SIZE = (89, 109)  # width, height
CROP_BOX = (0, 10, 89, 99)  # left, top, right, bottom: 89×89, the 178×178 centre crop at half scale
RESAMPLE = "BOX"
LEVELS = 256
CACHE_FORMAT = 1
SOURCE = (
    "CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): img_align_celeba "
    "000001.jpg-010000.jpg at 89x109, zipped under celeba_align_first10k_89x109/ (the copy in "
    "github.com/karthikSingireddy/cs389-hw4, folder celebA/; see docs/grn.md, CelebA)"
)
_MEMBER = re.compile(rf"^{re.escape(IMAGE_FOLDER)}/(\d{{6}})\.jpg$")


def celeba_files() -> DatasetFiles:
    """The file the ``celeba`` dataset needs under ``<data_dir>/celeba/`` (with its md5)."""
    return DatasetFiles(
        dataset="celeba", folder="celeba", files=(DataFile(ZIP_NAME, ZIP_MD5),), source=SOURCE
    )


# -- decoding ------------------------------------------------------------------------------------
def _image_members(archive: zipfile.ZipFile, path: Path) -> list[str]:
    numbered = sorted((int(m.group(1)), name) for name in archive.namelist() if (m := _MEMBER.match(name)))
    numbers = [n for n, _ in numbered]
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise DataError(
            f"{path} does not hold the images {IMAGE_FOLDER}/000001.jpg, 000002.jpg, ... in "
            f"order (found {len(numbers)} numbered images). Replace it with the original zip "
            f"({SOURCE})."
        )
    return [name for _, name in numbered]


def _decode_one(archive: zipfile.ZipFile, name: str, path: Path, size: int, resample: Any) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(archive.read(name))) as image:
            image.load()
            width, height = image.size
            square = image.convert("RGB").crop(CROP_BOX) if image.size == SOURCE_SIZE else None
    except (OSError, UnidentifiedImageError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot decode {name} ({type(exc).__name__}: {exc}). The zip is corrupt; "
            f"delete it and fetch the original again ({SOURCE})."
        ) from exc
    if square is None:
        raise DataError(
            f"{path}: {name} is {width}x{height} pixels, expected {SOURCE_SIZE[0]}x"
            f"{SOURCE_SIZE[1]}. Replace the zip with the original ({SOURCE})."
        )
    return np.asarray(square.resize((size, size), resample), dtype=np.uint8).transpose(2, 0, 1)


def decode_zip(path: Path, size: int) -> np.ndarray:
    """Decode, crop and resize every image of the zip: ``uint8`` array ``(N, 3, size, size)``."""
    from PIL import Image  # imported here, so that `flowkit list` stays light

    resample = Image.Resampling[RESAMPLE]
    try:
        with zipfile.ZipFile(path) as archive:
            names = _image_members(archive, path)
            out = np.empty((len(names), 3, size, size), dtype=np.uint8)
            for i, name in enumerate(names):
                out[i] = _decode_one(archive, name, path, size, resample)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{path} is not a readable zip file ({exc}); delete it and fetch the original again ({SOURCE})."
        ) from exc
    return out


# -- the cache -----------------------------------------------------------------------------------
def _cache_paths(zip_md5: str, size: int) -> tuple[Path, Path]:
    stem = f"celeba-{zip_md5}-{size}px-{RESAMPLE.lower()}-v{CACHE_FORMAT}"
    folder = cache_dir()
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _expected_record(zip_md5: str, size: int) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "source_md5": zip_md5,
        "size": size,
        "filter": RESAMPLE,
        "crop": list(CROP_BOX),
    }


def _read_cache(zip_md5: str, size: int) -> np.ndarray | None:
    """The cached array, ``None`` if there is none; a cache that fails a check is reported."""
    array_path, record_path = _cache_paths(zip_md5, size)
    if not array_path.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if {k: record.get(k) for k in _expected_record(zip_md5, size)} != _expected_record(zip_md5, size):
            raise ValueError("its record describes other data")
        raw = array_path.read_bytes()
        if hashlib.md5(raw, usedforsecurity=False).hexdigest() != record.get("md5"):
            raise ValueError("its md5 does not match its record (corrupt or truncated)")
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if (
            array.dtype != np.uint8
            or array.ndim != 4
            or array.shape[1:] != (3, size, size)
            or list(array.shape) != record.get("shape")
        ):
            raise ValueError(f"it holds an array of shape {array.shape} and type {array.dtype}")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        warnings.warn(f"rebuilding the CelebA cache {array_path}: {exc}", stacklevel=3)
        return None
    return array


def _write_cache(array: np.ndarray, zip_md5: str, size: int) -> None:
    """Cache ``array``: the ``.npy`` first, then its record, each by temp file + ``os.replace``."""
    array_path, record_path = _cache_paths(zip_md5, size)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    raw = buffer.getvalue()
    record = _expected_record(zip_md5, size) | {
        "md5": hashlib.md5(raw, usedforsecurity=False).hexdigest(),
        "shape": list(array.shape),
    }
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(array_path, lambda fh: fh.write(raw))
        atomic_write(record_path, lambda fh: fh.write(json.dumps(record, indent=1).encode()))
    except OSError as exc:  # an unwritable cache only costs time
        warnings.warn(
            f"cannot write the CelebA cache in {array_path.parent} ({exc}); set "
            f"FLOWKIT_CACHE to a writable folder to avoid decoding every time",
            stacklevel=3,
        )


def load_images(path: Path, zip_md5: str, size: int) -> np.ndarray:
    """Every image of the (already verified) zip as ``uint8`` ``(N, 3, size, size)``, cached."""
    array = _read_cache(zip_md5, size)
    if array is None:
        array = decode_zip(path, size)
        _write_cache(array, zip_md5, size)
    return array


# -- the plugin ----------------------------------------------------------------------------------
@checked
def celeba(
    *,
    data_dir: Path | None = None,
    size: Annotated[
        int, Range(1, CROP_BOX[2] - CROP_BOX[0], note="the square crop is 89x89 pixels; use e.g. 64 or 32")
    ] = 64,
    n_train: Annotated[int, Range(1, note="unset: every image but the test ones")] | None = None,
    n_test: Annotated[int, Range(1)] = 1000,
) -> DataSplits:
    """CelebA faces, first 10k aligned images, centre-cropped to a square, size×size RGB, 256 levels.

    Reads ``<data_dir>/celeba/celeba_align_first10k_89x109.zip`` (md5-checked), crops each
    89×109 image to the box (0, 10, 89, 99) — the usual 178×178 centre crop — and resizes it to
    ``size × size`` with Pillow's BOX (area-average) filter; pixels ``k`` become ``k / 256``,
    shape ``(N, 3, size, size)``, no labels. The last ``n_test`` images are the test split, the
    first ``n_train`` of the others (all by default) the training split. Decoded arrays are
    cached under ``$FLOWKIT_CACHE`` (Liu, Luo, Wang & Tang 2015, "Deep Learning Face Attributes
    in the Wild", ICCV, §4 "Large-scale CelebFaces Attributes (CelebA) Dataset").

    Pixels: ``x = k / 256`` for each RGB value ``k ∈ {0, …, 255}`` of the resized crop.

    References:

    * Liu, Luo, Wang & Tang 2015, "Deep Learning Face Attributes in the Wild", ICCV 2015.

    Arguments:

    * ``data_dir`` (injected): the data folder; ``None``: ``$FLOWKIT_DATA``. flowkit sets it from
      ``data.data_dir``.
    * ``size`` (int in [1, 89], default 64): side of the square images after resizing the 89×89 crop.
    * ``n_train`` (int ≥ 1 | None, default None): training images (the first of those not in the test split);
      ``None``: all of them.
    * ``n_test`` (int ≥ 1, default 1000): test images, the last ones of the 10000.

    Example::

        >>> import tempfile
        >>> from flowkit.plugins.datasets.celeba import CROP_BOX, ZIP_NAME, celeba
        >>> ZIP_NAME, CROP_BOX  # <data_dir>/celeba/ZIP_NAME; the 89×89 box cut from each 89×109 image
        ('celeba_align_first10k_89x109.zip', (0, 10, 89, 99))
        >>> with tempfile.TemporaryDirectory() as empty:  # doctest: +ELLIPSIS
        ...     celeba(data_dir=empty, size=32)
        Traceback (most recent call last):
            ...
        flowkit.errors.DataError: dataset 'celeba': folder .../celeba does not exist ...
    """
    spec = celeba_files()
    path = require_files(spec, resolve_data_dir(data_dir))[ZIP_NAME]
    images = load_images(path, ZIP_MD5, size)
    total = images.shape[0]
    if n_test >= total:
        raise ConfigError(
            f"[dataset] celeba n_test={n_test} leaves no training images: the zip holds {total} "
            f"images; use at most {total - 1} (default 1000)"
        )
    available = total - n_test
    if n_train is not None and n_train > available:
        raise ConfigError(
            f"[dataset] celeba n_train={n_train} is more than the {available} training images "
            f"({total} images minus n_test={n_test}); use at most {available}, or leave it unset"
        )
    stop = available if n_train is None else n_train
    train = torch.from_numpy(images[:stop].astype(np.float32) / LEVELS)
    test = torch.from_numpy(images[available:].astype(np.float32) / LEVELS)
    return DataSplits(
        name="celeba",
        train=train,
        test=test,
        levels=LEVELS,
        num_classes=None,
        default_preprocess="logit",
        info={
            "file": str(path),
            "size": size,
            "crop": CROP_BOX,
            "filter": RESAMPLE,
            "n_train": stop,
            "n_test": n_test,
            "source": SOURCE,
        },
    )
