"""Molecular systems: OpenMM force fields as torch energies, internal coordinates."""
