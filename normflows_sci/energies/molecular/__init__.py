"""Molecular systems: OpenMM force fields as torch energies, internal coordinates.

OpenMM is imported only when a system is built, so this package imports without it.
"""

from normflows_sci.energies.molecular.generator import internal_coordinate_flow
from normflows_sci.energies.molecular.internal import (
    ALANINE_DIPEPTIDE_PHI,
    ALANINE_DIPEPTIDE_PSI,
    InternalCoordinates,
    alanine_dipeptide_z_matrix,
)
from normflows_sci.energies.molecular.openmm import OpenMMBridgeEnergy, OpenMMEnergy
from normflows_sci.energies.molecular.systems import alanine_dipeptide, dihedral

__all__ = [
    "OpenMMEnergy",
    "OpenMMBridgeEnergy",
    "alanine_dipeptide",
    "dihedral",
    "InternalCoordinates",
    "alanine_dipeptide_z_matrix",
    "ALANINE_DIPEPTIDE_PHI",
    "ALANINE_DIPEPTIDE_PSI",
    "internal_coordinate_flow",
]
