"""Mixed categorical / continuous tables (issue 21): the shipped mixed penguins table, the exact
joint density over categories x numbers, samples, files, score uncertainty and out-of-support
rows."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from normflows_sci.datasets import list_datasets, load_dataset  # noqa: E402

# ----------------------------------------------------------------------------- the shipped table


def test_mixed_penguins_is_an_edition_of_penguins_with_a_pinned_checksum():
    from normflows_sci.datasets import _MIXED

    spec = _MIXED["penguins"]
    path = resources.files("normflows_sci.datasets").joinpath("data").joinpath(spec.filename)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    ds = load_dataset("penguins", categorical=True)
    assert list_datasets() == ["atlantic_storms", "penguins"]  # one name per dataset
    assert ds.shape == (333, 7) == (spec.rows, len(spec.columns))
    assert ds.categorical == ["species", "island", "sex"] == ds.columns[:3]
    frame = ds.data
    assert all(isinstance(frame[c].dtype, pd.CategoricalDtype) for c in ds.categorical)
    assert list(frame["species"].cat.categories) == ["Adelie", "Chinstrap", "Gentoo"]
    assert frame["sex"].value_counts().to_dict() == {"male": 168, "female": 165}
    assert not frame.isna().any().any()
    # The measurements are those of the numeric edition, on the birds with every value recorded.
    numeric = load_dataset("penguins").data
    known = {tuple(row) for row in numeric.tolist()}
    assert all(tuple(row) in known for row in frame[ds.columns[3:]].to_numpy().tolist())
    assert ds.discrete == ["flipper_length_mm", "body_mass_g"]
    with pytest.raises(ValueError, match="no categorical edition"):
        load_dataset("atlantic_storms", categorical=True)
