"""Molecular systems: OpenMM force fields as torch energies, Z-matrices of molecules.

``InternalCoordinates`` (a transform) is importable here for the older path; its home is
:mod:`normflows_sci.transforms`, and the flow built on it is
:func:`normflows_sci.flows.internal_coordinate_flow`.

OpenMM is imported only when a system is built, so this package imports without it.
"""

import warnings

from normflows_sci.energies.molecular.internal import (
    ALANINE_DIPEPTIDE_PHI,
    ALANINE_DIPEPTIDE_PSI,
    alanine_dipeptide_z_matrix,
)
from normflows_sci.energies.molecular.internal import (
    InternalCoordinates as InternalCoordinates,  # the older import path
)
from normflows_sci.energies.molecular.openmm import OpenMMBridgeEnergy, OpenMMEnergy
from normflows_sci.energies.molecular.systems import alanine_dipeptide, dihedral

__all__ = [
    "OpenMMEnergy",
    "OpenMMBridgeEnergy",
    "alanine_dipeptide",
    "dihedral",
    "alanine_dipeptide_z_matrix",
    "ALANINE_DIPEPTIDE_PHI",
    "ALANINE_DIPEPTIDE_PSI",
]


def __getattr__(name: str):
    # internal_coordinate_flow builds a flow, so it lives in normflows_sci.flows (energies never
    # import flows at import time); the old spelling still works, with a warning.
    if name == "internal_coordinate_flow":
        warnings.warn(
            "normflows_sci.energies.molecular.internal_coordinate_flow moved: import it from "
            "normflows_sci.flows",
            DeprecationWarning,
            stacklevel=2,
        )
        from normflows_sci.flows.molecular import internal_coordinate_flow

        return internal_coordinate_flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
