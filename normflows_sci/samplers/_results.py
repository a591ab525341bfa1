"""The read-by-key base of the package's result dataclasses."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import fields

__all__ = ["FieldMapping"]


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls))


class FieldMapping(Mapping):
    """Base of a result dataclass that also reads as a read-only Mapping of its fields, in
    declaration order, so code written for the dict it replaces keeps working:
    ``result["samples"]``, ``"samples" in result``, ``result.keys()``, ``dict(result)``.

    Subclasses are dataclasses (``@dataclass(frozen=True, eq=False)``: fields holding tensors
    have no meaningful ``==``). A key that is not a field raises ``KeyError``.

    Not a ``dict``: ``pandas.DataFrame(result)`` does not build columns from it (it gives a frame
    of the field names); these results hold tensors of different lengths, which are not table
    material anyway: select the fields you need.
    """

    __slots__ = ()

    def __getitem__(self, key: str):
        if key not in _field_names(type(self)):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_field_names(type(self)))

    def __len__(self) -> int:
        return len(_field_names(type(self)))
