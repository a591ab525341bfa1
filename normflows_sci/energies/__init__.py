"""Target energies: the ``Energy`` protocol, toy and particle targets, molecules through OpenMM."""

from normflows_sci.energies.base import Energy, TemperedEnergy
from normflows_sci.energies.molecular import (
    InternalCoordinates as InternalCoordinates,  # the older import path
)
from normflows_sci.energies.molecular import (
    OpenMMBridgeEnergy,
    OpenMMEnergy,
    alanine_dipeptide,
)
from normflows_sci.energies.particles import (
    DW4,
    LJ13,
    ParticleEnergy,
    center_of_mass,
    pairwise_distances,
    pairwise_squared_distances,
    remove_center_of_mass,
)
from normflows_sci.energies.toy import DoubleWell, GaussianMixture2D, ManyWell, MuellerBrown

__all__ = [
    "Energy",
    "TemperedEnergy",
    "DoubleWell",
    "ManyWell",
    "GaussianMixture2D",
    "MuellerBrown",
    "ParticleEnergy",
    "DW4",
    "LJ13",
    "center_of_mass",
    "remove_center_of_mass",
    "pairwise_distances",
    "pairwise_squared_distances",
    "OpenMMEnergy",
    "OpenMMBridgeEnergy",
    "alanine_dipeptide",
]
