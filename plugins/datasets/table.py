"""``table``: your own data from a CSV/TSV/text table or a NumPy ``.npy``/``.npz`` file.

Rows are examples. A text table (``.csv``, ``.tsv``, ``.txt``) or a 2-D ``.npy`` array is split
into data columns ``x`` and, optionally, context columns (``context_columns``) for conditional
density estimation ``p(x | context)``. An ``.npz`` holds an array ``x`` of any shape ``(N, ...)``
and optionally either a real-valued ``context`` ``(N, ...)`` or integer class labels ``y``
``(N,)``. The rows are split into train, validation and test sets by a permutation drawn from the
run's seed, and the training split's per-feature mean and standard deviation are returned as
``standardization``: the data itself stays in your units and the model standardises it inside
(``data.preprocess = "standardize"``), counting the log-determinant, so reported NLLs are
densities of the raw data.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, overload

import numpy as np
import torch

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError, DataError
from flowkit.params import Range, Seed, checked

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
ARRAY_SUFFIXES = (".npy", ".npz")
_MAX_LISTED = 5  # problem cells named in one message


@checked
def table(
    *,
    path: str,
    context_columns: Sequence[int] = (),
    x_columns: Sequence[int] = (),
    delimiter: str = ",",
    header: Literal["auto", "yes", "no"] = "auto",
    val_fraction: Annotated[float, Range(0, 1, max_inclusive=False, note="0: no validation split")] = 0.1,
    test_fraction: Annotated[
        float,
        Range(0, 1, min_inclusive=False, max_inclusive=False, note="the final evaluation needs test rows"),
    ] = 0.1,
    max_rows: Annotated[int, Range(0, note="0: every row")] = 0,
    seed: Seed = 0,
    data_dir: Path | None = None,
) -> DataSplits:
    """Your own data: rows of a .csv/.tsv/.txt table or a .npy/.npz array, with optional context.

    ``path`` is resolved against the current folder, then the data folder. In a table,
    ``context_columns`` (indices, negative from the end) are the context and ``x_columns``
    (default: every other column) the data; ``delimiter`` separates cells (``.tsv``: a tab unless
    set; a blank delimiter splits on runs of whitespace) and ``header`` says whether the first
    row holds column names (``auto``: when one of its cells is not a number). ``val_fraction``
    and ``test_fraction`` of the rows (drawn by the seed) form the validation and test splits;
    ``max_rows`` > 0 reads only the first rows. Statistics for ``standardize`` come from the
    training split only.

    Of ``N`` rows, ``n_test = max(1, round(N · test_fraction))`` and
    ``n_val = max(1, round(N · val_fraction))`` (0 when ``val_fraction = 0``) are drawn by the seed, the other
    ``N − n_val − n_test`` (at least 2) train; every row gives ``x = row[x_columns]`` and
    ``c = row[context_columns]``.

    References:

    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    * Winkler, Worrall, Hoogeboom & Welling 2019, "Learning Likelihoods with Conditional Normalizing Flows",
      arXiv:1912.00042.

    Arguments:

    * ``path`` (str, required): the file: ``.csv``, ``.tsv``, ``.txt``, ``.npy`` or ``.npz``.
    * ``context_columns`` (Sequence[int], default ()): column indices of the context (negative: from the end);
      empty: no context.
    * ``x_columns`` (Sequence[int], default ()): column indices of the data; empty: every column not in the
      context.
    * ``delimiter`` (str, default ','): the cell separator of a text table (blank: runs of whitespace).
    * ``header`` ('auto' | 'yes' | 'no', default 'auto'): whether the first row names the columns; ``'auto'``:
      when one of its cells is not a number.
    * ``val_fraction`` (float in [0, 1), default 0.1): the share of rows in the validation split; 0: none.
      With ``test_fraction`` below 1.
    * ``test_fraction`` (float in (0, 1), default 0.1): the share of rows in the test split.
    * ``max_rows`` (int ≥ 0, default 0): read only the first rows; 0: every row.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.
    * ``data_dir`` (injected): the data folder; ``None``: ``$FLOWKIT_DATA``. flowkit sets it from
      ``data.data_dir``.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from flowkit.plugins.datasets.table import table
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = Path(folder.name) / "rows.csv"
        >>> i = np.arange(100)
        >>> np.savetxt(path, np.column_stack([i, i % 7, i % 3]), fmt="%d", delimiter=",")
        >>> data = table(path=str(path), context_columns=[-1], val_fraction=0.1, test_fraction=0.2)
        >>> data.train.shape, data.val.shape, data.test.shape, data.train_context.shape
        (torch.Size([70, 2]), torch.Size([10, 2]), torch.Size([20, 2]), torch.Size([70, 1]))
        >>> folder.cleanup()
    """
    _check_fractions(val_fraction, test_fraction)
    file = _resolve_path(path, data_dir)
    suffix = file.suffix.lower()
    info: dict[str, object] = {"path": str(file), "format": suffix.lstrip(".")}
    labels: np.ndarray | None = None
    if suffix in TEXT_SUFFIXES:
        if suffix == ".tsv" and delimiter == ",":
            delimiter = "\t"
        values, names, line_numbers = _read_text(
            file, delimiter, header, max_rows, sniff=suffix == ".txt" and delimiter == ","
        )
        x, context = _select_columns(file, values, names, line_numbers, context_columns, x_columns, info)
    elif suffix == ".npy":
        array = _load_npy(file, max_rows)
        if array.ndim <= 2:
            values = array.reshape(array.shape[0], -1)
            x, context = _select_columns(file, values, None, None, context_columns, x_columns, info)
        else:  # e.g. images (N, C, H, W): all of it is x
            _refuse_columns(file, context_columns, x_columns, "it has more than two dimensions")
            _check_finite_array(file, "the array", array)
            x, context = array, None
    elif suffix == ".npz":
        _refuse_columns(
            file,
            context_columns,
            x_columns,
            "an .npz names its arrays: put the context in an array named 'context'",
        )
        x, context, labels = _load_npz(file, max_rows)
    else:
        raise ConfigError(
            f"[dataset] table: cannot read {file.name!r}: the file name must end in "
            f"{', '.join(TEXT_SUFFIXES + ARRAY_SUFFIXES)}"
        )
    n = x.shape[0]
    if n == 0:
        raise DataError(f"{file}: the file holds no data rows; add rows to it")
    x = x.astype(np.float32)
    if context is not None:
        context = context.astype(np.float32)

    splits = _split_rows(n, val_fraction, test_fraction, seed)
    train_idx = splits["train"]
    standardization = {**_stats(x[train_idx], "x", file, info)}
    if context is not None:
        standardization.update(_stats(context[train_idx], "context", file, info))
    num_classes = None
    if labels is not None:
        num_classes = int(labels.max()) + 1

    @overload
    def part(array: np.ndarray, split: str) -> torch.Tensor: ...
    @overload
    def part(array: None, split: str) -> None: ...
    def part(array: np.ndarray | None, split: str) -> torch.Tensor | None:
        if array is None:
            return None
        return torch.from_numpy(np.ascontiguousarray(array[splits[split]]))

    has_val = splits["val"].size > 0
    info.update(
        {
            "rows": n,
            "shape": list(x.shape[1:]),
            "context_shape": None if context is None else list(context.shape[1:]),
            "splits": {k: int(v.size) for k, v in splits.items()},
            "seed": seed,
        }
    )
    return DataSplits(
        name="table",
        train=part(x, "train"),
        test=part(x, "test"),
        val=part(x, "val") if has_val else None,
        train_labels=part(labels, "train"),
        test_labels=part(labels, "test"),
        val_labels=part(labels, "val") if has_val else None,
        train_context=part(context, "train"),
        test_context=part(context, "test"),
        val_context=part(context, "val") if has_val else None,
        num_classes=num_classes,
        default_preprocess="standardize",
        standardization=standardization,
        info={k: v for k, v in info.items() if v is not None},
    )


# -- options and the file ----------------------------------------------------------------------
def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Each fraction is checked by its declared range; together they must leave training rows."""
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"[dataset] table: val_fraction ({val_fraction}) + test_fraction ({test_fraction}) "
            f"= {val_fraction + test_fraction:g} leaves no training data; keep their sum well "
            f"below 1 (e.g. 0.1 and 0.1)"
        )


def _resolve_path(path: str, data_dir: Path | None) -> Path:
    if not path:
        raise ConfigError('[dataset] table needs a file: set data.path = "my-data.csv"')
    given = Path(path).expanduser()
    tried = [given if given.is_absolute() else Path.cwd() / given]
    if not given.is_absolute() and data_dir is not None:
        tried.append(Path(data_dir) / given)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(p) for p in tried)
    hint = (
        ""
        if data_dir is not None or given.is_absolute()
        else " (no data folder is set: --data-dir, data.data_dir or $FLOWKIT_DATA)"
    )
    raise DataError(
        f"[dataset] table: data file {path!r} not found (looked for {where}){hint}; check "
        f"data.path, give an absolute path, or put the file in the data folder"
    )


def _refuse_columns(file: Path, context_columns: Sequence[int], x_columns: Sequence[int], why: str) -> None:
    if context_columns or x_columns:
        raise ConfigError(
            f"[dataset] table: context_columns/x_columns select columns of a table, but "
            f"{file.name} is not one ({why}); remove them"
        )


# -- text tables ---------------------------------------------------------------------------------
def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_text(
    file: Path, delimiter: str, header: str, max_rows: int, sniff: bool = False
) -> tuple[np.ndarray, list[str] | None, list[int]]:
    """Cells as a float64 array, the header's names (or ``None``), each data row's line number.

    ``sniff``: a ``.txt`` file read with the default delimiter; it is split on whitespace when its
    first line has no comma.
    """
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the file as UTF-8 text ({exc})") from exc
    if sniff:
        first = next(
            (line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), ""
        )
        if "," not in first:
            delimiter = " "
    whitespace = delimiter.strip() == ""
    if not whitespace and len(delimiter) != 1:
        raise ConfigError(
            f"[dataset] table delimiter must be one character (or blank: any whitespace), got {delimiter!r}"
        )

    def cells_of(line: str) -> list[str]:
        if whitespace:
            return line.split()
        return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]

    rows: list[list[float]] = []
    line_numbers: list[int] = []
    names: list[str] | None = None
    width = 0
    width_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = cells_of(line if whitespace else raw)
        if (
            names is None
            and not rows
            and (header == "yes" or (header == "auto" and not all(map(_is_number, cells))))
        ):
            names = cells
            width, width_line = len(cells), number
            continue
        if not width:
            width, width_line = len(cells), number
        if len(cells) != width:
            raise DataError(
                f"{file}: line {number} has {len(cells)} columns, expected {width} (as in line "
                f"{width_line}); every row needs the same number of cells (is "
                f"delimiter={delimiter!r} right?)"
            )
        row = []
        for col, cell in enumerate(cells):
            try:
                row.append(float(cell))
            except ValueError:
                label = _column_label(col, names)
                what = "an empty cell" if cell == "" else f"the non-numeric value {cell!r}"
                fix = ""
                if any(sep in cell for sep in ",;\t "):
                    fix = f" (is data.delimiter = {delimiter!r} right?)"
                elif not rows and names is None:
                    fix = ' (a header row? set data.header = "yes")'
                raise DataError(
                    f"{file}: line {number}, {label}: {what}; every cell must be a number"
                    f"{fix}. Fix or remove that row."
                ) from None
        rows.append(row)
        line_numbers.append(number)
        if max_rows and len(rows) >= max_rows:
            break
    if not rows:
        what = "only a header" if names is not None else "no data rows"
        raise DataError(f"{file}: the file is empty ({what}); add rows of numbers to it")
    return np.asarray(rows, dtype=np.float64), names, line_numbers


def _column_label(col: int, names: list[str] | None) -> str:
    return f"column {col} ({names[col]!r})" if names is not None else f"column {col}"


def _check_finite(
    file: Path,
    values: np.ndarray,
    columns: list[int],
    names: list[str] | None,
    line_numbers: list[int] | None,
) -> None:
    """NaN or infinite cells in the used ``columns`` of a table, named by row and column."""
    used = np.zeros(values.shape[1], dtype=bool)
    used[columns] = True
    bad = np.argwhere(~np.isfinite(values) & used)
    if bad.size == 0:
        return
    where = []
    for r, c in bad[:_MAX_LISTED]:
        row = f"line {line_numbers[r]}" if line_numbers is not None else f"array row {r}"
        where.append(f"{row}, {_column_label(int(c), names)}: {values[r, c]}")
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise DataError(
        f"{file}: {len(bad)} cell(s) are NaN or infinite ({'; '.join(where)}{more}); fill in or "
        f"remove those rows"
    )


def _check_finite_array(file: Path, what: str, array: np.ndarray) -> None:
    finite = np.isfinite(array.reshape(array.shape[0], -1))
    if finite.all():
        return
    rows = np.flatnonzero(~finite.all(axis=1))
    listed = ", ".join(map(str, rows[:_MAX_LISTED])) + (" ..." if rows.size > _MAX_LISTED else "")
    raise DataError(
        f"{file}: {what} has NaN or infinite values in {rows.size} row(s) (rows {listed}); fill "
        f"in or remove those rows"
    )


def _normalise_columns(file: Path, option: str, columns: Sequence[int], width: int) -> list[int]:
    out = []
    for c in columns:
        if not -width <= c < width:
            raise ConfigError(
                f"[dataset] table {option}: column {c} is out of range for {file.name}, which "
                f"has {width} columns (use 0..{width - 1}, or -{width}..-1 from the end)"
            )
        c = c % width
        if c in out:
            raise ConfigError(f"[dataset] table {option} names column {c} twice; list it once")
        out.append(c)
    return out


def _select_columns(
    file: Path,
    values: np.ndarray,
    names: list[str] | None,
    line_numbers: list[int] | None,
    context_columns: Sequence[int],
    x_columns: Sequence[int],
    info: dict[str, object],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The data and context columns of a table (checked: in range, disjoint, finite)."""
    width = values.shape[1]
    ctx = _normalise_columns(file, "context_columns", context_columns, width)
    xs = _normalise_columns(file, "x_columns", x_columns, width)
    if not xs:
        xs = [c for c in range(width) if c not in ctx]
    overlap = sorted(set(ctx) & set(xs))
    if overlap:
        raise ConfigError(
            f"[dataset] table: column(s) {', '.join(map(str, overlap))} are in both "
            f"context_columns and x_columns; a column is either context or data"
        )
    if not xs:
        raise ConfigError(
            f"[dataset] table: every column of {file.name} is a context column, which leaves "
            f"no data to model; keep at least one column out of context_columns"
        )
    _check_finite(file, values, xs + ctx, names, line_numbers)
    info.update({"columns": width, "x_columns": xs, "context_columns": ctx or None, "column_names": names})
    return values[:, xs], (values[:, ctx] if ctx else None)


# -- NumPy files ---------------------------------------------------------------------------------
def _numeric(file: Path, what: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{file}: {what} has dtype {array.dtype}, not numbers; save it as a float array")
    return array


def _load_npy(file: Path, max_rows: int) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{file}: not a readable .npy array ({exc})") from exc
    array = _numeric(file, "the array", array)
    if array.ndim == 0:
        raise DataError(f"{file}: holds a single number, not rows of data")
    if array.ndim == 1:  # N scalars
        array = array[:, None]
    return array[:max_rows] if max_rows else array


def _load_npz(file: Path, max_rows: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{file}: not a readable .npz archive ({exc})") from exc
    if "x" not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(
            f"{file}: no array named 'x' (found: {found}); save the data as x, e.g. "
            f"np.savez(path, x=data, context=context)"
        )
    if "context" in arrays and "y" in arrays:
        raise DataError(
            f"{file}: holds both 'context' (a real-valued context) and 'y' (class labels); a "
            f"model conditions on one of them: save only one"
        )
    x = _numeric(file, "array 'x'", arrays["x"])
    if x.ndim == 0:
        raise DataError(f"{file}: array 'x' is a single number, not rows of data")
    if x.ndim == 1:
        x = x[:, None]
    context = arrays.get("context")
    labels = arrays.get("y")
    for name, extra in (("context", context), ("y", labels)):
        if extra is not None and (extra.ndim == 0 or extra.shape[0] != x.shape[0]):
            rows = "no rows" if extra.ndim == 0 else f"{extra.shape[0]} rows"
            raise DataError(
                f"{file}: array {name!r} has {rows} but 'x' has {x.shape[0]}; they need one row per example"
            )
    if max_rows:
        x = x[:max_rows]
        context = None if context is None else context[:max_rows]
        labels = None if labels is None else labels[:max_rows]
    _check_finite_array(file, "array 'x'", x)
    if context is not None:
        context = _numeric(file, "array 'context'", context)
        if context.ndim == 1:
            context = context[:, None]
        _check_finite_array(file, "array 'context'", context)
    if labels is not None:
        labels = _labels(file, _numeric(file, "array 'y'", labels))
    return x, context, labels


def _labels(file: Path, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{file}: class labels 'y' must have shape (N,), got {y.shape}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.all(y == np.round(y))):
        raise DataError(
            f"{file}: class labels 'y' must be whole numbers 0, 1, 2, ...; for a real-valued "
            f"condition save it as 'context' instead"
        )
    if y.size and y.min() < 0:
        raise DataError(f"{file}: class labels 'y' must be >= 0, found {y.min()}")
    return y.astype(np.int64)


# -- splits and statistics -----------------------------------------------------------------------
def _split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Sorted row indices of each split, from a permutation drawn by ``seed``."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_train = n - n_test - n_val
    if n_train < 2:
        raise ConfigError(
            f"[dataset] table: {n} rows with test_fraction={test_fraction} and "
            f"val_fraction={val_fraction} leave {max(n_train, 0)} training row(s); at least 2 "
            f"are needed: use more rows or smaller fractions"
        )
    order = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(order[n_test + n_val :]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "test": np.sort(order[:n_test]),
    }


def _stats(train: np.ndarray, prefix: str, file: Path, info: dict[str, object]) -> dict[str, list[float]]:
    """Per-feature mean and standard deviation of the training rows (flattened features)."""
    flat = train.reshape(train.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    constant = np.flatnonzero(flat.max(axis=0) == flat.min(axis=0))
    if constant.size:
        std[constant] = 1.0
        info[f"constant_{prefix}_features"] = constant.tolist()
        listed = ", ".join(map(str, constant[:10])) + (" ..." if constant.size > 10 else "")
        warnings.warn(
            f"table {file.name}: {constant.size} {prefix} feature(s) are constant in the training "
            f"split (feature {listed}); their standard deviation is taken as 1.0",
            stacklevel=3,
        )
    return {f"{prefix}_mean": mean.tolist(), f"{prefix}_std": std.tolist()}
