"""The ``table`` dataset (CSV/TSV/text/.npy/.npz), its errors, and ``standardize`` preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit import registry
from flowkit.data.preprocess import PREPROCESS_CHOICES, Standardize, build_preprocess
from flowkit.errors import ConfigError, DataError


def load(path: Path | str, data_dir: Path | None = None, seed: int = 0, **params):
    """The table dataset through the registry, as a run builds it (parameters validated)."""
    return registry.datasets.build(
        "table", {"path": str(path), **params}, injected={"seed": seed, "data_dir": data_dir}
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def numbered_csv(path: Path, n: int = 50) -> Path:
    """Columns: row index, 2*index, index % 7 (context); distinct rows identify themselves."""
    rows = [f"{i},{2 * i},{i % 7}" for i in range(n)]
    return write(path, "idx,double,ctx\n" + "\n".join(rows) + "\n")


# -- reading --------------------------------------------------------------------------------------
def test_csv_with_header_and_context(tmp_path: Path):
    data = load(numbered_csv(tmp_path / "t.csv"), context_columns=[-1], val_fraction=0.1, test_fraction=0.2)
    assert data.name == "table" and data.default_preprocess == "standardize"
    assert data.shape == (2,) and data.context_shape == (1,)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (35, 5, 10)
    assert data.train.dtype == torch.float32 and data.train_context.dtype == torch.float32
    # the splits partition the rows; every row keeps its own context
    idx = torch.cat([data.train[:, 0], data.val[:, 0], data.test[:, 0]]).long()
    assert sorted(idx.tolist()) == list(range(50))
    for split in ("train", "val", "test"):
        x, c = getattr(data, split), data.conditioning(split)
        assert torch.equal(x[:, 1], 2 * x[:, 0])
        assert torch.equal(c[:, 0], x[:, 0] % 7)
    assert data.info["column_names"] == ["idx", "double", "ctx"]
    assert data.info["x_columns"] == [0, 1] and data.info["context_columns"] == [2]
    assert data.info["rows"] == 50 and data.info["splits"] == {"train": 35, "val": 5, "test": 10}
    assert data.meta.context_shape == (1,)


def test_split_is_drawn_from_the_seed(tmp_path: Path):
    path = numbered_csv(tmp_path / "t.csv")
    a, b, c = load(path), load(path), load(path, seed=1)
    assert torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)


def test_header_detection(tmp_path: Path):
    plain = write(tmp_path / "plain.csv", "1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n")
    assert load(plain).info.get("column_names") is None
    assert load(plain, val_fraction=0.0, test_fraction=0.2).train.shape[0] == 5  # no header row
    assert load(plain, header="yes", val_fraction=0.0, test_fraction=0.2).train.shape[0] == 4
    named = write(tmp_path / "named.csv", "a,b\n1,2\n3,4\n5,6\n7,8\n")
    assert load(named, val_fraction=0.0, test_fraction=0.25).info["column_names"] == ["a", "b"]
    with pytest.raises(
        DataError,
        match=r"line 1, column 0: the non-numeric value 'a'.*"
        r"data.header = \"yes\"",
    ):
        load(named, header="no")


def test_tsv_whitespace_txt_and_comments(tmp_path: Path):
    tsv = write(tmp_path / "t.tsv", "x\ty\n" + "".join(f"{i}\t{-i}\n" for i in range(10)))
    txt = write(tmp_path / "t.txt", "# a comment\n" + "".join(f"{i}   {-i}\n" for i in range(10)))
    semi = write(tmp_path / "t.csv", "".join(f"{i};{-i}\n" for i in range(10)))
    for data in (load(tsv), load(txt), load(semi, delimiter=";")):
        assert data.shape == (2,)
        x = torch.cat([data.train, data.val, data.test])
        assert torch.equal(x[:, 1], -x[:, 0]) and x.shape[0] == 10


def test_x_columns_and_max_rows(tmp_path: Path):
    path = numbered_csv(tmp_path / "t.csv")
    data = load(path, x_columns=[1], context_columns=[0], max_rows=20)
    assert data.shape == (1,) and data.info["rows"] == 20
    x = torch.cat([data.train, data.val, data.test])[:, 0]
    assert x.max() == 38  # rows 0..19 only, column 1 = 2 * index
    assert torch.equal(data.train[:, 0], 2 * data.train_context[:, 0])


def test_npy_and_npz(tmp_path: Path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(40, 3)))
    assert load(tmp_path / "a.npy").shape == (3,)
    assert load(tmp_path / "a.npy", context_columns=[0]).context_shape == (1,)
    np.save(tmp_path / "v.npy", rng.normal(size=40))
    assert load(tmp_path / "v.npy").shape == (1,)

    np.savez(tmp_path / "c.npz", x=rng.normal(size=(40, 2)), context=rng.normal(size=(40, 2, 3)))
    data = load(tmp_path / "c.npz")
    assert data.shape == (2,) and data.context_shape == (2, 3)
    assert len(data.standardization["context_mean"]) == 6  # flattened per context feature

    y = np.arange(40) % 4
    np.savez(tmp_path / "y.npz", x=rng.normal(size=(40, 2)) + y[:, None], y=y)
    data = load(tmp_path / "y.npz")
    assert data.num_classes == 4 and data.context_shape is None
    assert data.train_labels.dtype == torch.long
    assert torch.equal(data.conditioning("val"), data.val_labels)
    assert "context_mean" not in data.standardization


def test_relative_path_falls_back_to_the_data_folder(tmp_path: Path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    numbered_csv(folder / "mine.csv")
    monkeypatch.chdir(tmp_path)
    assert load("mine.csv", data_dir=folder).info["path"] == str(folder / "mine.csv")
    with pytest.raises(DataError, match=r"'mine.csv' not found.*no data folder is set"):
        load("mine.csv")


def test_config_accepts_the_table_keys(tmp_path: Path):
    path = numbered_csv(tmp_path / "t.csv")
    config = flowkit.load_config(
        None, [f"data.path={path}", "data.context_columns=[2]", "data.val_fraction=0.2"], data="table"
    )
    assert config["data"]["context_columns"] == [2]
    assert config["data"]["header"] == "auto" and config["data"]["test_fraction"] == 0.1
    with pytest.raises(ConfigError, match="header must be one of"):
        flowkit.load_config(None, [f"data.path={path}", "data.header=maybe"], data="table")


# -- statistics -----------------------------------------------------------------------------------
def test_standardization_comes_from_the_training_split_only(tmp_path: Path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "d.npy", rng.normal(3.0, 2.0, size=(60, 3)) * np.array([1.0, 10.0, 0.1]))
    data = load(tmp_path / "d.npy", context_columns=[2])
    stats = data.standardization
    train = data.train.double()
    assert np.allclose(stats["x_mean"], train.mean(0).numpy())
    assert np.allclose(stats["x_std"], train.std(0, unbiased=False).numpy())
    assert np.allclose(stats["context_mean"], data.train_context.double().mean(0).numpy())
    everything = torch.cat([data.train, data.val, data.test]).double()
    assert not np.allclose(stats["x_mean"], everything.mean(0).numpy())
    assert data.meta.standardization == stats  # travels with checkpoints


def test_constant_column_gets_unit_scale_and_a_warning(tmp_path: Path):
    path = write(tmp_path / "c.csv", "".join(f"{i},5\n" for i in range(20)))
    with pytest.warns(UserWarning, match="constant in the training split"):
        data = load(path)
    assert data.standardization["x_std"][1] == 1.0
    assert data.standardization["x_mean"][1] == 5.0
    assert data.info["constant_x_features"] == [1]


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "params", "error", "pattern"),
    [
        ("", {}, DataError, r"empty \(no data rows\)"),
        ("a,b\n", {}, DataError, r"empty \(only a header\)"),
        ("a,b\n1,2\n3,x7\n", {}, DataError, r"line 3, column 1 \('b'\): the non-numeric value 'x7'"),
        ("1,2\n3,\n", {}, DataError, r"line 2, column 1: an empty cell"),
        ("1 2\n3 4\n", {}, DataError, r"non-numeric value '3 4'.*delimiter"),
        (
            "a,b\n1,2\n3,nan\n4,inf\n",
            {},
            DataError,
            r"2 cell\(s\) are NaN or infinite \(line 3, column 1 \('b'\): nan; line 4, column 1 "
            r"\('b'\): inf\)",
        ),
        ("1,2,3\n4,5\n", {}, DataError, r"line 2 has 2 columns, expected 3 \(as in line 1\)"),
        (
            "1,2\n3,4\n",
            {"context_columns": [2]},
            ConfigError,
            r"context_columns: column 2 is out of range.*2 columns \(use 0..1, or -2..-1",
        ),
        ("1,2\n3,4\n", {"x_columns": [-3]}, ConfigError, r"x_columns: column -3 is out of range"),
        (
            "1,2,3\n4,5,6\n",
            {"context_columns": [0], "x_columns": [0, 1]},
            ConfigError,
            r"column\(s\) 0 are in both context_columns and x_columns",
        ),
        ("1,2\n3,4\n", {"context_columns": [0, 1]}, ConfigError, r"every column .* context column"),
        ("1,2\n3,4\n", {"context_columns": [0, -2]}, ConfigError, r"names column 0 twice"),
        ("1,2\n3,4\n5,6\n", {}, ConfigError, r"3 rows .* leave 1 training row\(s\); at least 2"),
        (
            "1,2\n",
            {"val_fraction": 0.5, "test_fraction": 0.5},
            ConfigError,
            r"val_fraction \(0.5\) \+ test_fraction \(0.5\) = 1 leaves no training data",
        ),
        ("1,2\n", {"test_fraction": 0.0}, ConfigError, r"test_fraction must be strictly between"),
        ("1,2\n", {"delimiter": "::"}, ConfigError, r"delimiter must be one character"),
    ],
)
def test_bad_tables_name_the_problem(tmp_path: Path, text, params, error, pattern):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(error, match=pattern) as info:
        load(path, **params)
    if error is DataError:
        assert str(path) in str(info.value)


def test_missing_file_and_unknown_format(tmp_path: Path):
    with pytest.raises(DataError, match=r"data file .*nope.csv' not found"):
        load(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=r"must end in .csv, .tsv, .txt, .npy, .npz"):
        load(write(tmp_path / "t.xlsx", "1,2\n"))


def test_bad_npz_files(tmp_path: Path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nox.npz", data=rng.normal(size=(10, 2)))
    with pytest.raises(DataError, match=r"no array named 'x' \(found: data\)"):
        load(tmp_path / "nox.npz")
    np.savez(
        tmp_path / "both.npz",
        x=rng.normal(size=(10, 2)),
        context=rng.normal(size=(10, 1)),
        y=np.zeros(10, dtype=np.int64),
    )
    with pytest.raises(DataError, match=r"both 'context' .* and 'y'"):
        load(tmp_path / "both.npz")
    np.savez(tmp_path / "rows.npz", x=rng.normal(size=(10, 2)), context=rng.normal(size=(9, 1)))
    with pytest.raises(DataError, match=r"array 'context' has 9 rows but 'x' has 10"):
        load(tmp_path / "rows.npz")
    x = rng.normal(size=(10, 2))
    x[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(
        DataError,
        match=r"array 'x' has NaN or infinite values in 1 row\(s\) "
        r"\(rows 4\)",
    ):
        load(tmp_path / "nan.npz")
    np.savez(tmp_path / "frac.npz", x=rng.normal(size=(10, 2)), y=np.full(10, 0.5))
    with pytest.raises(DataError, match="whole numbers"):
        load(tmp_path / "frac.npz")
    np.savez(tmp_path / "ok.npz", x=rng.normal(size=(10, 2)))
    with pytest.raises(ConfigError, match="context_columns/x_columns select columns of a table"):
        load(tmp_path / "ok.npz", context_columns=[0])
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"not a readable \.npy array"):
        load(tmp_path / "junk.npy")


# -- standardize preprocessing --------------------------------------------------------------------
def test_standardize_round_trip_and_logdet_in_float64():
    mean, std = [1.0, -2.0, 0.5], [0.5, 3.0, 10.0]
    t = Standardize((3,), mean, std).double()
    x = torch.randn(5, 3, dtype=torch.float64) * 4
    w, logdet = t(x)
    assert torch.allclose(
        w, (x - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
    )
    back, logdet_inv = t.inverse(w)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.allclose(logdet_inv, -logdet)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0))[0].squeeze(0), x[0])
    assert torch.allclose(logdet, torch.linalg.slogdet(jac).logabsdet.expand(5))
    assert math.isclose(float(logdet[0]), -sum(math.log(s) for s in std), rel_tol=1e-12)
    assert t.domain is None


def test_standardize_follows_the_input_dtype_and_image_shapes():
    t = Standardize((1, 2, 2), [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 4.0, 8.0])
    x = torch.randn(3, 1, 2, 2)
    w, logdet = t(x)
    assert w.dtype == logdet.dtype == torch.float32 and logdet.shape == (3,)
    assert torch.allclose(t.inverse(w)[0], x, atol=1e-6)
    assert set(t.state_dict()) == {"mean", "std"}


def test_build_preprocess_standardize():
    assert "standardize" in PREPROCESS_CHOICES
    stats = {"x_mean": [0.0, 1.0], "x_std": [2.0, 3.0]}
    assert isinstance(build_preprocess("auto", (2,), 0.05, "standardize", stats), Standardize)
    assert isinstance(build_preprocess("standardize", (2,), 0.05, "none", standardization=stats), Standardize)
    assert type(build_preprocess("none", (2,), 0.05, "standardize", stats)).__name__ == "Identity"
    assert type(build_preprocess("auto", (2,), 0.05, "none")).__name__ == "Identity"  # old call
    with pytest.raises(ConfigError, match="this dataset provides no statistics"):
        build_preprocess("standardize", (2,), 0.05, "none")
    with pytest.raises(ConfigError, match="x_mean has 2 values but the data has 3 features"):
        build_preprocess("standardize", (3,), 0.05, "none", stats)
    with pytest.raises(ConfigError, match="x_std > 0"):
        build_preprocess("standardize", (2,), 0.05, "none", {"x_mean": [0, 0], "x_std": [1, 0]})


def test_reported_nll_is_in_the_units_of_the_data(tmp_path: Path):
    """Scaling the data by 10 leaves the standardised data unchanged and adds D·log 10 to the NLL."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * np.array([1.0, 5.0, 0.2]) + 7.0
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", 10.0 * x)
    log_p = []
    for name in ("a.npy", "b.npy"):
        config = flowkit.load_config(
            None,
            [f"data.path={tmp_path / name}", "transform.hidden=8", "transform.num_layers=2"],
            transform="maf",
            data="table",
        )
        data = load(tmp_path / name)
        torch.manual_seed(0)
        model = flowkit.build_model(config, data.meta)
        assert isinstance(model.preprocess, Standardize)
        with torch.no_grad():
            log_p.append(model.log_prob(data.test))
    assert torch.allclose(log_p[0] - log_p[1], torch.full_like(log_p[0], 3 * math.log(10.0)), atol=1e-4)
