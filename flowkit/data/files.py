"""Checksummed access to dataset files kept in a data folder, and a reader for gzip IDX files.

Datasets that cannot ship with flowkit (MNIST, Fashion-MNIST, ...) are read from
``<data_dir>/<folder>/`` where ``data_dir`` comes from ``--data-dir``, the config's
``data.data_dir`` or ``$FLOWKIT_DATA``. :func:`require_files` checks that every file is there
and has the published md5 sum, and otherwise raises one :class:`~flowkit.errors.DataError`
listing every problem and how to fix it.

The IDX format (LeCun et al., "The MNIST database of handwritten digits") is a big-endian
header — two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions
``d`` — followed by ``d`` 32-bit sizes and the row-major data. Magic number 2051 (``0x0803``) is
an image file of shape ``(N, rows, cols)``, 2049 (``0x0801``) a label file of shape ``(N,)``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from flowkit.errors import DataError

#: IDX type code → numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One required file of a dataset: its name inside the dataset folder and its md5 sum."""

    name: str
    md5: str


@dataclass(frozen=True)
class DatasetFiles:
    """The files a dataset needs under ``<data_dir>/<folder>/`` and where to download them."""

    dataset: str
    folder: str
    files: tuple[DataFile, ...]
    source: str

    def expected_paths(self) -> str:
        """``folder/name`` of every file, comma-separated, for error messages."""
        return ", ".join(f"{self.folder}/{f.name}" for f in self.files)


def _stat_key(path: Path) -> tuple[str, int, int]:
    """``(resolved path, mtime in ns, size)``: a cache key that changes when the file does."""
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=64)
def _md5_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex md5 digest of a file (cached per path, modification time and size)."""
    return _md5_cached(*_stat_key(Path(path)))


def verify_md5(path: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`DataError` unless the file at ``path`` has md5 digest ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected a file with md5 {expected})")
    actual = md5sum(path)
    if actual != expected.lower():
        raise DataError(
            f"{path} fails its checksum: expected md5 {expected}, got {actual}. The file is "
            f"corrupt, truncated or a different version; delete it and download it again."
        )


def _fix_hint(spec: DatasetFiles) -> str:
    return (
        f"Fix: pass --data-dir DIR or set FLOWKIT_DATA=DIR (or data.data_dir in the config), "
        f"where DIR is a folder containing {spec.expected_paths()} — the original files, "
        f"downloadable from {spec.source}."
    )


def require_files(spec: DatasetFiles, data_dir: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Return ``{file name: path}`` for every file of ``spec`` under ``<data_dir>/<folder>/``.

    Every file must exist and match its md5 sum; otherwise one :class:`DataError` names the
    dataset, the folder looked in, each missing or corrupt file (expected vs actual md5) and how
    to point flowkit at a folder that has them.
    """
    if data_dir is None or str(data_dir) == "":
        raise DataError(
            f"dataset {spec.dataset!r} is read from files, but no data folder is set. " + _fix_hint(spec)
        )
    root = Path(data_dir).expanduser()
    folder = root / spec.folder
    if not folder.is_dir():
        hint = ""
        if root.is_dir() and all((root / f.name).is_file() for f in spec.files):
            hint = (
                f" {root} itself holds the files: pass its parent folder ({root.parent}) "
                f"instead, so that flowkit finds {root.name}/<file>."
            )
        raise DataError(
            f"dataset {spec.dataset!r}: folder {folder} does not exist (data folder: {root})."
            f"{hint} " + _fix_hint(spec)
        )
    problems: list[str] = []
    paths: dict[str, Path] = {}
    for f in spec.files:
        path = folder / f.name
        if not path.is_file():
            problems.append(f"  - {f.name}: missing")
            continue
        actual = md5sum(path)
        if actual != f.md5:
            problems.append(f"  - {f.name}: md5 mismatch (expected {f.md5}, got {actual})")
            continue
        paths[f.name] = path
    if problems:
        raise DataError(
            f"dataset {spec.dataset!r}: {len(problems)} required file(s) missing or corrupt "
            f"in {folder}:\n" + "\n".join(problems) + "\n" + _fix_hint(spec)
        )
    return paths


def _corrupt(path: str, what: str) -> DataError:
    return DataError(f"{path} is not a valid gzip IDX file: {what}. Delete it and download it again.")


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _corrupt(path, f"cannot decompress it ({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4:
        raise _corrupt(path, f"only {len(raw)} bytes after decompression, no IDX header")
    magic = int.from_bytes(raw[:4], "big")
    zeros, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zeros != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise _corrupt(path, f"wrong magic number {magic} (expected 2051 for images or 2049 for labels)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"header of {header} bytes cut short at {len(raw)} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise _corrupt(
            path,
            f"header says shape {dims} ({expected} data bytes) but the file holds "
            f"{len(raw) - header} data bytes (truncated or padded)",
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    array.setflags(write=False)
    return array


def read_idx_gz(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a gzip-compressed IDX file into a read-only array of the shape its header gives.

    Results are cached in-process per path, modification time and size, so repeated loads are
    free; copy the array before changing it. Raises :class:`DataError` for a missing file, bad
    gzip data, an unknown magic number, or a data size that disagrees with the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a gzip IDX file there.")
    return _read_idx_cached(*_stat_key(path))
