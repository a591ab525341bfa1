"""Target energies: the ``Energy`` protocol, toy and particle targets, molecules through OpenMM."""

from normflows_sci.energies.base import Energy, TemperedEnergy

__all__ = ["Energy", "TemperedEnergy"]
