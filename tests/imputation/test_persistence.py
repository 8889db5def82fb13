"""Tests of saving and loading fitted imputers with skops."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.linear_model import LogisticRegression

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.baseline import MeanModeImputer
from pipeline.imputation.image_features import TokenImputer
from pipeline.imputation.iterative import IterativeTabularImputer
from pipeline.imputation.persistence import load_imputer, save_imputer


@pytest.fixture()
def table() -> EncodedTable:
    rng = np.random.default_rng(0)
    categorical = rng.integers(0, 3, size=(30, 2))
    continuous = rng.normal(size=(30, 2)).astype(np.float32)
    categorical[rng.random((30, 2)) < 0.2] = -1
    continuous[rng.random((30, 2)) < 0.2] = np.nan
    missing = np.concatenate([categorical < 0, np.isnan(continuous)], axis=1)
    return EncodedTable(categorical, continuous, missing, ("a", "b", "c", "d"))


def test_persistence_round_trip_same_values(table: EncodedTable, tmp_path: Path) -> None:
    imputer = IterativeTabularImputer(max_iter=2, n_estimators=5, random_state=0).fit(table, [3, 3])

    loaded = load_imputer(save_imputer(imputer, tmp_path / "iterative.skops"))

    assert isinstance(loaded, IterativeTabularImputer)
    assert np.array_equal(loaded.transform(table).categorical, imputer.transform(table).categorical)
    assert np.array_equal(loaded.transform(table).continuous, imputer.transform(table).continuous)


def test_persistence_round_trip_mean_mode(table: EncodedTable, tmp_path: Path) -> None:
    imputer = MeanModeImputer().fit(table, [3, 3])

    loaded = load_imputer(save_imputer(imputer, tmp_path / "mean.skops"))

    assert np.array_equal(loaded.modes_, imputer.modes_)


def test_persistence_rejects_pickle(table: EncodedTable, tmp_path: Path) -> None:
    path = tmp_path / "imputer.skops"
    path.write_bytes(pickle.dumps(MeanModeImputer().fit(table, [3, 3])))

    with pytest.raises(ValueError, match=f"{path}.*not a readable skops file"):
        load_imputer(path)


def test_persistence_rejects_truncated_file(table: EncodedTable, tmp_path: Path) -> None:
    path = save_imputer(MeanModeImputer().fit(table, [3, 3]), tmp_path / "mean.skops")
    path.write_bytes(path.read_bytes()[:-40])

    with pytest.raises(ValueError, match=str(path)):
        load_imputer(path)


def test_persistence_rejects_untrusted_type(table: EncodedTable, tmp_path: Path) -> None:
    path = save_imputer(MeanModeImputer().fit(table, [3, 3]), tmp_path / "mean.skops")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["schema.json"] = members["schema.json"].replace(
        b'"pipeline.imputation.baseline"', b'"os"'
    ).replace(b'"MeanModeImputer"', b'"system"')
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)

    with pytest.raises(ValueError, match=r"needs the types \['os.system'\], which are not trusted"):
        load_imputer(path)


def test_persistence_rejects_foreign_estimator(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    sio.dump(LogisticRegression(), path)

    with pytest.raises(ValueError, match="contains a LogisticRegression, not a saved imputer"):
        load_imputer(path)


def test_persistence_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imputer(tmp_path / "absent.skops")


def test_torch_imputers_round_trip_through_save_imputer(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(40, 2, 4)).astype(np.float32)
    source = rng.normal(size=(40, 3)).astype(np.float32)
    imputer = TokenImputer(max_epochs=3, random_state=0).fit(tokens, source, np.ones(40, dtype=bool))

    path = save_imputer(imputer, tmp_path / "tokens.pt")
    loaded = load_imputer(path)

    assert isinstance(loaded, TokenImputer)
    np.testing.assert_array_equal(loaded.transform(source), imputer.transform(source))


def test_foreign_torch_file_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)

    with pytest.raises(ValueError, match="weights.pt is a torch file but not a saved imputer"):
        load_imputer(path)


def fitted_token_imputer() -> TokenImputer:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(40, 2, 4)).astype(np.float32)
    source = rng.normal(size=(40, 3)).astype(np.float32)
    return TokenImputer(max_epochs=3, random_state=0).fit(tokens, source, np.ones(40, dtype=bool))


def test_flipped_bytes_in_torch_imputer_rejected(tmp_path):
    path = save_imputer(fitted_token_imputer(), tmp_path / "tokens.pt")
    data = bytearray(path.read_bytes())
    weights_start = data.find(b"data/0")  # inside the archive's tensor storage
    offset = max(weights_start, 0) + 400
    data[offset : offset + 4] = bytes(byte ^ 0xFF for byte in data[offset : offset + 4])
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="tokens.pt"):
        load_imputer(path)


def test_imputer_format_without_contents_rejected(tmp_path):
    path = tmp_path / "fake.pt"
    torch.save({"format": "pipeline.imputation.TokenImputer", "version": 1}, path)

    with pytest.raises(ValueError, match="fake.pt: the contents do not match the checksum"):
        load_imputer(path)


def test_interrupted_save_leaves_old_file_and_no_partial(table, tmp_path, monkeypatch):
    path = save_imputer(MeanModeImputer().fit(table, [3, 3]), tmp_path / "mean.skops")
    before = path.read_bytes()

    def interrupted_dump(obj, file):
        Path(file).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(sio, "dump", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        save_imputer(MeanModeImputer().fit(table, [3, 3]), path)

    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["mean.skops"]
