"""Ready-made molecular systems, and dihedral angles for Ramachandran plots.

``alanine_dipeptide()`` builds the standard Boltzmann-generator benchmark molecule (Amber ff96,
vacuum) from the parameter and coordinate files shipped inside the ``openmmtools`` package. The
files are located with ``importlib`` without importing ``openmmtools`` itself (whose import is slow
and prints banners), and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch import Tensor

from normflows_sci.energies.molecular.openmm import (
    OpenMMBridgeEnergy,
    OpenMMEnergy,
    difference,
    dihedral_angle,
    import_openmm,
)

__all__ = ["alanine_dipeptide", "dihedral"]

_ALANINE_FILES = "alanine-dipeptide-gbsa"
# (atom name, residue name) expected at the phi / psi indices of the shipped topology.
_PHI = ((4, "C", "ACE"), (6, "N", "ALA"), (8, "CA", "ALA"), (14, "C", "ALA"))
_PSI = ((6, "N", "ALA"), (8, "CA", "ALA"), (14, "C", "ALA"), (16, "N", "NME"))


def _openmmtools_file(name: str) -> str:
    """Path of a data file shipped with openmmtools, found without importing openmmtools."""
    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "alanine_dipeptide() reads the force-field files shipped with openmmtools, which is "
            'not installed; install it with `pip install "normflows_sci[molecular]"` '
            "(or `conda install openmmtools`)"
        )
    path = os.path.join(spec.submodule_search_locations[0], "data", _ALANINE_FILES, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"openmmtools is installed but does not ship {path}")
    return path


def alanine_dipeptide(
    temperature: float = 300.0, *, bridge: bool = False, validate_args: bool = True
) -> OpenMMEnergy | OpenMMBridgeEnergy:
    """Alanine dipeptide (Ace-Ala-Nme, 22 atoms, Amber ff96) in vacuum as an energy in kT.

    The same System as ``openmmtools.testsystems.AlanineDipeptideVacuum(constraints=None)``: no
    constraints and no cutoff, so all 66 Cartesian degrees of freedom are free. Inputs are
    ``(batch, 66)`` positions in nm.

    Args:
        temperature: temperature in kelvin.
        bridge: return an :class:`OpenMMBridgeEnergy` (evaluation through OpenMM's Reference
            platform) instead of the torch :class:`OpenMMEnergy`.
        validate_args: check inputs on every call.

    Returns:
        The energy, with extra attributes: ``topology`` (``openmm.app.Topology``), ``positions``
        (``(1, 66)`` float64 tensor in nm, the shipped structure), ``atom_names`` (list of 22
        names), ``phi_atoms = (4, 6, 8, 14)`` (C(ACE)-N-CA-C) and ``psi_atoms = (6, 8, 14, 16)``
        (N-CA-C-N(NME)), to be used with :func:`dihedral` for Ramachandran plots.

    Example:
        >>> import pytest; _ = pytest.importorskip("openmm"); _ = pytest.importorskip("openmmtools")
        >>> energy = alanine_dipeptide()
        >>> energy.positions.shape, energy.atom_names[energy.phi_atoms[2]]
        (torch.Size([1, 66]), 'CA')
        >>> phi = dihedral(energy.positions, *energy.phi_atoms)  # radians, in [-pi, pi)
    """
    openmm = import_openmm()
    from openmm import app

    prmtop = app.AmberPrmtopFile(_openmmtools_file("alanine-dipeptide.prmtop"))
    system = prmtop.createSystem(
        nonbondedMethod=app.NoCutoff, constraints=None, implicitSolvent=None
    )
    coordinates = app.AmberInpcrdFile(_openmmtools_file("alanine-dipeptide.crd"))
    positions = coordinates.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)

    atoms = list(prmtop.topology.atoms())
    for name, spec in (("phi", _PHI), ("psi", _PSI)):
        found = [(atoms[i].name, atoms[i].residue.name) for i, _, _ in spec]
        if found != [(atom, residue) for _, atom, residue in spec]:
            raise RuntimeError(f"unexpected alanine dipeptide topology: {name} atoms are {found}")

    kind = OpenMMBridgeEnergy if bridge else OpenMMEnergy
    energy = kind(system, temperature, validate_args=validate_args)
    energy.topology = prmtop.topology
    energy.positions = torch.as_tensor(positions, dtype=torch.float64).reshape(1, -1).clone()
    energy.atom_names = [atom.name for atom in atoms]
    energy.phi_atoms = tuple(i for i, _, _ in _PHI)
    energy.psi_atoms = tuple(i for i, _, _ in _PSI)
    return energy


def dihedral(x: Tensor, i: int, j: int, k: int, l: int) -> Tensor:  # noqa: E741
    """Dihedral angle of atoms ``i-j-k-l`` for each configuration, in radians in ``[-pi, pi)``.

    Same sign convention as OpenMM's ``PeriodicTorsionForce`` and ``mdtraj.compute_dihedrals``
    (IUPAC: positive for a clockwise rotation of the far bond seen along ``j -> k``).
    Differentiable.

    Args:
        x: ``(batch, 3 N)`` flattened Cartesian positions (atom ``a`` at columns ``3a:3a+3``).
        i, j, k, l: four distinct atom indices in ``[0, N)``.

    Returns:
        ``(batch,)`` angles.

    Example:
        >>> x = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1]])
        >>> dihedral(x, 0, 1, 2, 3)
        tensor([-1.5708])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] % 3 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating (batch, 3 * num_atoms) tensor, got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}"
        )
    num_atoms = x.shape[1] // 3
    atoms = (i, j, k, l)
    if any(isinstance(a, bool) or not isinstance(a, int) for a in atoms):
        raise TypeError(f"atom indices must be integers, got {atoms!r}")
    if len(set(atoms)) != 4 or not all(0 <= a < num_atoms for a in atoms):
        raise ValueError(
            f"atom indices must be 4 distinct integers in [0, {num_atoms}), got {atoms}"
        )

    def position(a: int):
        return (x[:, 3 * a], x[:, 3 * a + 1], x[:, 3 * a + 2])

    xi, xj, xk, xl = (position(a) for a in atoms)
    phi = dihedral_angle(difference(xj, xi), difference(xk, xj), difference(xl, xk))
    return torch.where(phi >= math.pi, phi - 2 * math.pi, phi)
