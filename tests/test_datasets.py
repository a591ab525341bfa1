"""Shipped datasets: loading, shapes, metadata that holds on the data, provenance, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from importlib import resources

import numpy as np
import pytest
import torch

from normflows_sci.datasets import DEFAULT_DATASET, Dataset, list_datasets, load_dataset
from normflows_sci.transforms import BoundaryTransform

# name -> (rows, columns): pins the shipped files' shapes.
EXPECTED = {
    "atlantic_storms": (19535, ["lat", "long", "wind", "pressure", "day_of_year"]),
    "penguins": (342, ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]),
}

NAMES = list_datasets()


def test_list_datasets():
    assert NAMES == sorted(EXPECTED)
    assert all(isinstance(name, str) for name in NAMES)
    assert DEFAULT_DATASET in NAMES
    assert list_datasets() is not list_datasets()  # callers may mutate their list


def test_default_dataset_fits_the_demo():
    ds = load_dataset()
    assert ds.name == DEFAULT_DATASET
    rows, cols = ds.shape
    assert rows >= 1000 and 3 <= cols <= 15


@pytest.mark.parametrize("name", NAMES)
def test_load_shapes_columns_finite(name):
    ds = load_dataset(name)
    rows, columns = EXPECTED[name]
    assert isinstance(ds, Dataset)
    assert ds.name == name
    assert isinstance(ds.data, np.ndarray)
    assert ds.data.dtype == np.float64
    assert ds.data.shape == (rows, len(columns)) == ds.shape
    assert ds.columns == columns
    assert np.isfinite(ds.data).all()
    assert ds.data.flags.writeable


@pytest.mark.parametrize("name", NAMES)
def test_bounds_hold_strictly(name):
    ds = load_dataset(name)
    assert set(ds.bounds) <= set(ds.columns)
    for column, (low, high) in ds.bounds.items():
        assert low is not None or high is not None, column
        if low is not None and high is not None:
            assert low < high
        values = ds.data[:, ds.columns.index(column)]
        # Strictly inside: logit / inverse-softplus images of the data are finite.
        if low is not None:
            assert values.min() > low, column
        if high is not None:
            assert values.max() < high, column


@pytest.mark.parametrize("name", NAMES)
def test_column_bounds_feed_boundary_transform(name):
    ds = load_dataset(name)
    lower, upper = ds.column_bounds()
    assert len(lower) == len(upper) == len(ds.columns)
    for column, low, high in zip(ds.columns, lower, upper):
        assert ds.bounds.get(column, (None, None)) == (low, high)
    z, logabsdet = BoundaryTransform(lower, upper)(torch.from_numpy(ds.data))
    assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all()


@pytest.mark.parametrize("name", NAMES)
def test_discrete_columns_are_integer_valued(name):
    ds = load_dataset(name)
    assert set(ds.discrete) <= set(ds.columns)
    mask = ds.discrete_mask()
    assert mask.tolist() == [c in ds.discrete for c in ds.columns]
    values = ds.data[:, mask]
    np.testing.assert_array_equal(values, np.round(values))
    # The continuous columns really are not integer-valued (the metadata is not too short).
    for column in set(ds.columns) - set(ds.discrete):
        values = ds.data[:, ds.columns.index(column)]
        assert (values != np.round(values)).any(), column


@pytest.mark.parametrize("name", NAMES)
def test_provenance_and_units(name):
    ds = load_dataset(name)
    for text in (ds.description, ds.source, ds.license):
        assert isinstance(text, str) and len(text) > 40
    assert "public domain" in ds.license.lower() or "CC0" in ds.license
    assert set(ds.units) == set(ds.columns)


@pytest.mark.parametrize("name", NAMES)
def test_packaged_file_is_a_resource_with_pinned_checksum(name):
    from normflows_sci.datasets import _REGISTRY

    spec = _REGISTRY[name]
    path = resources.files("normflows_sci.datasets").joinpath("data").joinpath(spec.filename)
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert spec.rows == EXPECTED[name][0]


def test_known_values():
    storms = load_dataset("atlantic_storms").data
    # First fix: Amy, 27 June 1975, 00 UTC; and the physics: stronger wind, lower pressure.
    np.testing.assert_array_equal(storms[0], [27.5, -79.0, 25.0, 1013.0, 178.0])
    assert np.corrcoef(storms[:, 2], storms[:, 3])[0, 1] < -0.9
    assert storms[:, 2].max() == 165.0 and storms[:, 3].min() == 882.0  # Allen 1980, Wilma 2005
    penguins = load_dataset("penguins").data
    np.testing.assert_array_equal(penguins[0], [39.1, 18.7, 181.0, 3750.0])


def test_loads_are_independent_copies():
    first = load_dataset("penguins")
    first.data[0, 0] = -1.0
    first.bounds.clear()
    first.discrete.append("x")
    second = load_dataset("penguins")
    assert second.data[0, 0] == 39.1
    assert second.bounds and "x" not in second.discrete


def test_dataset_is_frozen_and_repr_is_short():
    ds = load_dataset("penguins")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    text = repr(ds)
    assert "penguins" in text and len(text) < 200


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as info:
        load_dataset("nope")
    for name in NAMES:
        assert repr(name) in str(info.value)
    with pytest.raises(TypeError, match="must be a str"):
        load_dataset(3)  # type: ignore[arg-type]


def test_as_frame():
    pandas = pytest.importorskip("pandas")
    for name in NAMES:
        ds = load_dataset(name, as_frame=True)
        assert isinstance(ds.data, pandas.DataFrame)
        assert list(ds.data.columns) == ds.columns
        assert ds.shape == ds.data.shape
        assert all(dtype == np.float64 for dtype in ds.data.dtypes)
        np.testing.assert_array_equal(ds.data.to_numpy(), load_dataset(name).data)


def test_as_frame_without_pandas_names_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ImportError, match="pandas"):
        load_dataset(as_frame=True)
    assert isinstance(load_dataset().data, np.ndarray)
