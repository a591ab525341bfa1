"""Former home of :func:`normflows_sci.flows.internal_coordinate_flow` (deprecated path)."""

from __future__ import annotations

import warnings

__all__: list[str] = []


def __getattr__(name: str):
    if name == "internal_coordinate_flow":
        warnings.warn(
            "normflows_sci.energies.molecular.generator.internal_coordinate_flow moved: import it "
            "from normflows_sci.flows",
            DeprecationWarning,
            stacklevel=2,
        )
        from normflows_sci.flows.molecular import internal_coordinate_flow

        return internal_coordinate_flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
