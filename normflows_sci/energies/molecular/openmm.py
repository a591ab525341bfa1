"""OpenMM systems as batched, differentiable torch energies.

Two ways to turn an ``openmm.System`` into an :class:`~normflows_sci.energies.Energy` on flattened
Cartesian positions ``x: (batch, 3 * num_atoms)`` in nm, with dimensionless energies
``u(x) = U(x) / kT``:

* :class:`OpenMMEnergy` reads the force field once and evaluates it in pure torch: batched, on any
  device and dtype, differentiable to any order by autograd. It covers the force terms of a
  vacuum/non-periodic classical force field (harmonic bonds and angles, periodic torsions,
  Coulomb + Lennard-Jones without cutoff) and refuses anything else with a clear error.
* :class:`OpenMMBridgeEnergy` evaluates through an OpenMM ``Context``, one configuration at a
  time, for any System (cutoffs, periodic boxes, implicit solvent, custom forces, ...); its
  gradient is OpenMM's force.

OpenMM is an optional dependency: this module imports without it, and the classes raise an
``ImportError`` with the install command when they are built without OpenMM.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from normflows_sci.checks import check_tensor
from normflows_sci.energies.base import Energy

__all__ = ["ONE_4PI_EPS0", "OpenMMBridgeEnergy", "OpenMMEnergy", "SUPPORTED_FORCES"]

# 1 / (4 pi eps0) in kJ mol^-1 nm e^-2, from the same CODATA 2018 constants and in the same order
# of operations as OpenMM's SimTKOpenMMRealType.h (OpenMM >= 8), so the double matches bit for bit.
_E_CHARGE = 1.602176634e-19  # C
_AVOGADRO = 6.02214076e23  # 1/mol
_EPSILON0 = 1e-6 * 8.8541878128e-12 / (_E_CHARGE * _E_CHARGE * _AVOGADRO)  # e^2 / (kJ/mol nm)
ONE_4PI_EPS0 = 1.0 / (4.0 * math.pi * _EPSILON0)

SUPPORTED_FORCES = (
    "HarmonicBondForce",
    "HarmonicAngleForce",
    "PeriodicTorsionForce",
    "NonbondedForce",
    "CMMotionRemover",
)

_INSTALL_HINT = (
    'install it with `pip install "normflows_sci[molecular]"` (or `conda install openmm`)'
)


def import_openmm():
    """Import OpenMM on demand with an actionable error when it is missing.

    Module-level helper (not re-exported): every molecular module that needs OpenMM imports it
    through here, so the install hint is written once.
    """
    try:
        import openmm
        import openmm.unit
    except ImportError as error:  # pragma: no cover - exercised only without OpenMM
        raise ImportError(f"OpenMM is required for molecular energies; {_INSTALL_HINT}") from error
    return openmm


def _check_system(system, openmm) -> int:
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    num_atoms = system.getNumParticles()
    if num_atoms < 1:
        raise ValueError("system must contain at least one particle, got 0")
    return num_atoms


def _check_temperature(temperature) -> float:
    """Kelvin as a float; accepts a number or an ``openmm.unit`` temperature quantity."""
    if hasattr(temperature, "value_in_unit"):
        from openmm import unit

        temperature = temperature.value_in_unit(unit.kelvin)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a positive finite number (K), got {temperature!r}")
    return float(temperature)


def _kt(temperature: float, openmm) -> float:
    """``R T`` in kJ/mol with OpenMM's gas constant."""
    unit = openmm.unit
    gas_constant = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    return gas_constant * temperature


def _strip(value, unit) -> float:
    """A plain float in ``unit`` from an OpenMM ``Quantity`` (or a bare number, already in it)."""
    return float(value.value_in_unit(unit)) if hasattr(value, "value_in_unit") else float(value)


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"OpenMMEnergy cannot evaluate {what}; it supports {', '.join(SUPPORTED_FORCES[:-1])} "
        "(NoCutoff) and CMMotionRemover in non-periodic systems without virtual sites. "
        "Use OpenMMBridgeEnergy, which evaluates any System through OpenMM itself."
    )


# ------------------------------------------------------------------------- geometry (torch)
# Vectors are 3-tuples of same-shaped component tensors. Positions are laid out as
# (3, atoms, batch), so a gather copies contiguous rows and every component of a per-term quantity
# is a dense (terms, batch) tensor: plain elementwise kernels, no reductions over a length-3 axis
# (which torch runs far slower than the arithmetic itself).

Vector = tuple[Tensor, Tensor, Tensor]


def difference(a: Vector, b: Vector) -> Vector:
    """``a - b`` componentwise (shared with :mod:`~normflows_sci.energies.molecular.systems`)."""
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _scale(a: Vector, s: Tensor) -> Vector:
    return (a[0] * s, a[1] * s, a[2] * s)


def _dot(a: Vector, b: Vector) -> Tensor:
    return torch.addcmul(torch.addcmul(a[0] * b[0], a[1], b[1]), a[2], b[2])


def _cross(a: Vector, b: Vector) -> Vector:
    return (
        torch.addcmul(a[1] * b[2], a[2], b[1], value=-1),
        torch.addcmul(a[2] * b[0], a[0], b[2], value=-1),
        torch.addcmul(a[0] * b[1], a[1], b[0], value=-1),
    )


def _floor(like: Tensor) -> float:
    """Smallest divisor used where a direction is undefined (coincident or collinear atoms): the
    quotient stays finite (so ``0 * quotient = 0``) and real geometries are never clamped."""
    return math.sqrt(torch.finfo(like.dtype).tiny)


def _norm(squared: Tensor) -> Tensor:
    """``sqrt(squared)`` whose autograd gradient is 0 (not NaN) where ``squared == 0``."""
    if not squared.requires_grad:
        return squared.sqrt()
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


def _angle_between(u: Vector, v: Vector) -> Tensor:
    """Angle between vectors ``u`` and ``v`` in ``[0, pi]``.

    ``atan2(|u x v|, u . v)`` is accurate everywhere and its gradient stays finite at 0 and pi,
    unlike ``acos`` of the normalised dot product.
    """
    normal = _cross(u, v)
    return torch.atan2(_norm(_dot(normal, normal)), _dot(u, v))


def dihedral_angle(b1: Vector, b2: Vector, b3: Vector) -> Tensor:
    """Dihedral angle in ``(-pi, pi]`` from bond vectors ``b1 = x_j - x_i``, ``b2 = x_k - x_j``,
    ``b3 = x_l - x_k`` (IUPAC sign convention, as OpenMM and MDTraj)."""
    n1, n2 = _cross(b1, b2), _cross(b2, b3)
    return torch.atan2(_norm(_dot(b2, b2)) * _dot(b1, n2), _dot(n1, n2))


def _columns(values, dtype=torch.float64) -> Tensor:
    """A ``(terms, 1)`` parameter column that broadcasts against ``(terms, batch)``."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype).reshape(-1, 1)


def _indices(values, width: int) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1, width).T.copy())


_SERIES = ("cos", "sin", "dcos", "dsin")

# Fused kernel: per term type, the (atom slot, gradient piece, sign) of each contribution.
_FUSED_PIECES = {
    "bond": ((0, 0, -1.0), (1, 0, 1.0)),  # piece g = dU/dx_j
    "angle": ((0, 0, 1.0), (1, 0, -1.0), (1, 1, -1.0), (2, 1, 1.0)),  # gi, gk
    "torsion": ((0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0), (3, 3, 1.0)),
    "nonbonded": ((0, 0, -1.0), (1, 0, 1.0)),  # piece g = dU/dx_j
}


def _cosine_series(
    cosine: Tensor, sine: Tensor, a: Tensor, b: Tensor, ma: Tensor, mb: Tensor
) -> tuple[Tensor, Tensor]:
    """``f = sum_m a_m cos(m phi) + b_m sin(m phi)`` and ``df/dphi`` from ``cos(phi)``,
    ``sin(phi)`` (each ``(terms, batch)``); ``a, b, ma = m a, mb = m b`` are ``(m, terms, 1)``,
    ``m = 1..len(a)``. Multiple angles by angle addition: only multiplications and additions."""
    value = torch.addcmul(a[0] * cosine, b[0], sine)
    slope = torch.addcmul(mb[0] * cosine, ma[0], sine, value=-1)
    cos_m, sin_m = cosine, sine
    for m in range(1, a.shape[0]):
        cos_m, sin_m = (
            torch.addcmul(cos_m * cosine, sin_m, sine, value=-1),
            torch.addcmul(sin_m * cosine, cos_m, sine),
        )
        value = value + torch.addcmul(a[m] * cos_m, b[m], sin_m)
        slope = slope + torch.addcmul(mb[m] * cos_m, ma[m], sin_m, value=-1)
    return value, slope


# ------------------------------------------------------------------------- force-field parsing


def _read_bonds(forces) -> dict[str, np.ndarray]:
    from openmm import unit

    atoms, length, k = [], [], []
    for force in forces:
        for term in range(force.getNumBonds()):
            i, j, r0, kb = force.getBondParameters(term)
            atoms.append((i, j))
            length.append(_strip(r0, unit.nanometer))
            k.append(_strip(kb, unit.kilojoule_per_mole / unit.nanometer**2))
    return {"atoms": np.array(atoms, dtype=np.int64).reshape(-1, 2), "r0": length, "k": k}


def _read_angles(forces) -> dict[str, np.ndarray]:
    from openmm import unit

    atoms, theta0, k = [], [], []
    for force in forces:
        for term in range(force.getNumAngles()):
            i, j, m, a0, ka = force.getAngleParameters(term)
            atoms.append((i, j, m))
            theta0.append(_strip(a0, unit.radian))
            k.append(_strip(ka, unit.kilojoule_per_mole / unit.radian**2))
    return {"atoms": np.array(atoms, dtype=np.int64).reshape(-1, 3), "theta0": theta0, "k": k}


def _read_torsions(forces) -> dict[str, np.ndarray]:
    from openmm import unit

    quads, periodicity, phase, k = [], [], [], []
    for force in forces:
        for term in range(force.getNumTorsions()):
            i, j, m, n, order, delta, kt = force.getTorsionParameters(term)
            if order < 1:  # an OpenMM Context refuses such a System too
                raise ValueError(
                    f"PeriodicTorsionForce term {term} ({i}, {j}, {m}, {n}): periodicity must be "
                    f"a positive integer, got {order}"
                )
            quads.append((i, j, m, n))
            periodicity.append(float(order))
            phase.append(_strip(delta, unit.radian))
            k.append(_strip(kt, unit.kilojoule_per_mole))
    quads = np.array(quads, dtype=np.int64).reshape(-1, 4)
    # Amber-style force fields put several Fourier terms on one quadruplet: compute each
    # dihedral angle once and gather it per term.
    unique, term_to_quad = np.unique(quads, axis=0, return_inverse=True)
    return {
        "atoms": unique.reshape(-1, 4),
        "term_to_quad": np.asarray(term_to_quad, dtype=np.int64).reshape(-1),
        "periodicity": periodicity,
        "phase": phase,
        "k": k,
    }


def _read_nonbonded(force, num_atoms: int, openmm) -> dict[str, np.ndarray]:
    """All interacting pairs of one NonbondedForce with NoCutoff, parameters fused per pair.

    Regular pairs use Lorentz-Berthelot combination; an exception replaces its pair's parameters,
    and pairs that end with zero charge product and zero epsilon (exclusions) are dropped.
    """
    unit = openmm.unit
    method = force.getNonbondedMethod()
    if method != openmm.NonbondedForce.NoCutoff:
        names = {
            getattr(openmm.NonbondedForce, name): name
            for name in ("CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME")
            if hasattr(openmm.NonbondedForce, name)
        }
        raise _unsupported(
            f"NonbondedForce with nonbonded method {names.get(method, method)} (only NoCutoff)"
        )
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise _unsupported(
            "NonbondedForce with parameter offsets (they depend on Context global parameters)"
        )
    charge = np.empty(num_atoms)
    sigma = np.empty(num_atoms)
    epsilon = np.empty(num_atoms)
    for atom in range(num_atoms):
        q, s, e = force.getParticleParameters(atom)
        charge[atom] = _strip(q, unit.elementary_charge)
        sigma[atom] = _strip(s, unit.nanometer)
        epsilon[atom] = _strip(e, unit.kilojoule_per_mole)
    first, second = np.triu_indices(num_atoms, k=1)
    charge_prod = charge[first] * charge[second]
    pair_sigma = 0.5 * (sigma[first] + sigma[second])
    pair_epsilon = np.sqrt(epsilon[first] * epsilon[second])
    for term in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(term)
        i, j = min(i, j), max(i, j)
        # Position of (i, j), i < j, in the row-major upper triangle.
        pair = i * num_atoms - i * (i + 1) // 2 + (j - i - 1)
        charge_prod[pair] = _strip(qq, unit.elementary_charge**2)
        pair_sigma[pair] = _strip(s, unit.nanometer)
        pair_epsilon[pair] = _strip(e, unit.kilojoule_per_mole)
    keep = (charge_prod != 0) | (pair_epsilon != 0)
    sigma6 = pair_sigma[keep] ** 6
    return {
        "atoms": np.stack([first[keep], second[keep]], axis=1),
        "coulomb": ONE_4PI_EPS0 * charge_prod[keep],
        "repulsion": 4.0 * pair_epsilon[keep] * sigma6 * sigma6,  # 4 eps sigma^12
        "dispersion": 4.0 * pair_epsilon[keep] * sigma6,  # 4 eps sigma^6
    }


class OpenMMEnergy(Energy):
    """An OpenMM force field evaluated in batched, differentiable torch.

    The System's parameters are read once at construction (float64 buffers, cast to the input's
    dtype and device at call); evaluation is gather-based with no Python loop over atoms or terms,
    so a batch of configurations costs a few large tensor operations. Energies are dimensionless,
    ``u = U / (R T)``.

    Supported: ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``,
    ``NonbondedForce`` with ``NoCutoff`` (Coulomb with OpenMM's ``ONE_4PI_EPS0``, Lennard-Jones
    with Lorentz-Berthelot combination, exceptions replacing the pair parameters, zero exceptions
    excluding the pair) and ``CMMotionRemover`` (no energy). Anything else (other forces, cutoffs,
    periodic boxes, virtual sites, parameter offsets) raises ``ValueError``: use
    :class:`OpenMMBridgeEnergy` for those. Constraints are ignored: every Cartesian degree of
    freedom is free (build the System with ``constraints=None``).

    Args:
        system: the ``openmm.System`` (copied; later edits to it have no effect).
        temperature: temperature in kelvin (> 0), or an ``openmm.unit`` temperature.
        validate_args: check input shape and finiteness on every call.

    Attributes:
        system: the copied ``openmm.System``.
        temperature: in kelvin.
        kT: ``R T`` in kJ/mol (OpenMM's ``MOLAR_GAS_CONSTANT_R``).
        num_atoms: number of particles ``N``; inputs are ``(batch, 3 N)`` in nm.
        block_size: on CPU, batches are evaluated in blocks of this many configurations (cache
            locality); 0 evaluates the whole batch at once. Other devices always use one pass.
        compile: how analytic energies and forces (:meth:`energy_and_force`, the gradient of
            :meth:`energy`) are evaluated. ``"auto"`` (default): eagerly until this instance has
            evaluated ``compile_after`` configurations on a device and dtype, then through a
            :func:`torch.compile` fused kernel (several times faster; compiling takes tens of
            seconds once per process, device and dtype, so it pays only for long runs).
            ``True`` compiles at the first call, ``False`` never compiles. The compiled kernel
            computes the same energies and forces (float64 agrees with the eager path to
            rounding); if compiling or running it fails, a ``RuntimeWarning`` says why and this
            instance evaluates eagerly from then on, with the eager numbers.
        compile_after: configurations evaluated eagerly before ``compile="auto"`` compiles.
        compile_block: on CPU the compiled kernel runs on blocks of this many configurations
            (the last block padded to it, so one compiled shape serves every batch size).

    Example:
        >>> import pytest; openmm = pytest.importorskip("openmm")
        >>> system = openmm.System()
        >>> for _ in range(2):
        ...     _ = system.addParticle(1.0)
        >>> bond = openmm.HarmonicBondForce()
        >>> _ = bond.addBond(0, 1, 0.1, 1000.0)  # r0 = 0.1 nm, k = 1000 kJ/mol/nm^2
        >>> _ = system.addForce(bond)
        >>> energy = OpenMMEnergy(system, temperature=300.0)
        >>> x = torch.tensor([[0.0, 0.0, 0.0, 0.12, 0.0, 0.0]], dtype=torch.float64)
        >>> u = energy.energy(x)  # 0.5 * 1000 * 0.02**2 kJ/mol in units of kT
        >>> round(float(u * energy.kT), 6)
        0.2
    """

    block_size: int = 512
    compile: bool | str = "auto"
    compile_after: int = 1 << 20
    compile_block: int = 512

    def __init__(self, system, temperature: float = 300.0, *, validate_args: bool = True):
        openmm = import_openmm()
        num_atoms = _check_system(system, openmm)
        temperature = _check_temperature(temperature)
        super().__init__(3 * num_atoms, validate_args=validate_args)
        if system.usesPeriodicBoundaryConditions():
            raise _unsupported("a periodic System (periodic box / periodic forces)")
        virtual = [i for i in range(num_atoms) if system.isVirtualSite(i)]
        if virtual:
            raise _unsupported(
                f"virtual sites (particles {virtual[:5]}{'...' if len(virtual) > 5 else ''})"
            )

        by_type: dict[str, list] = {name: [] for name in SUPPORTED_FORCES}
        for index, force in enumerate(system.getForces()):
            name = type(force).__name__
            if name not in by_type:
                raise _unsupported(f"force {index} ({name})")
            if force.usesPeriodicBoundaryConditions():
                raise _unsupported(f"force {index} ({name}) with periodic boundary conditions")
            by_type[name].append(force)

        self.system = copy.deepcopy(system)
        self.temperature = temperature
        self.num_atoms = num_atoms
        self.kT = _kt(temperature, openmm)
        self._terms: list[str] = []
        self._compiled = _CompiledKernels()

        if by_type["HarmonicBondForce"]:
            bonds = _read_bonds(by_type["HarmonicBondForce"])
            self._add("bond", bonds["atoms"], r0=bonds["r0"], k=bonds["k"])
        if by_type["HarmonicAngleForce"]:
            angles = _read_angles(by_type["HarmonicAngleForce"])
            self._add("angle", angles["atoms"], theta0=angles["theta0"], k=angles["k"])
        if by_type["PeriodicTorsionForce"]:
            torsions = _read_torsions(by_type["PeriodicTorsionForce"])
            k = np.asarray(torsions["k"])
            self._add(
                "torsion",
                torsions["atoms"],
                periodicity=torsions["periodicity"],
                phase=torsions["phase"],
                k=k,
                k_periodicity=k * np.asarray(torsions["periodicity"]),
            )
            self.register_buffer("torsion_term_to_quad", torch.as_tensor(torsions["term_to_quad"]))
            self.register_buffer("torsion_k_total", torch.tensor(k.sum(), dtype=torch.float64))
            self._add_torsion_series(torsions, len(torsions["atoms"]))
        if by_type["NonbondedForce"]:
            parts = [_read_nonbonded(f, num_atoms, openmm) for f in by_type["NonbondedForce"]]
            fused = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            self._add(
                "nonbonded",
                fused["atoms"],
                coulomb=fused["coulomb"],
                repulsion=fused["repulsion"],
                dispersion=fused["dispersion"],
                repulsion12=12.0 * fused["repulsion"],
                dispersion6=6.0 * fused["dispersion"],
            )

        # The fused path gathers every term's atoms with one index_select and assembles the
        # gradient with one index_add_ per component over the same slots (see _fused_block).
        # Torsions there run per quadruplet, its Fourier terms summed into one cosine series
        # (see _add_torsion_series): no transcendental functions and no gather/scatter between
        # quadruplets and terms.
        slots = [getattr(self, f"{term}_atoms").reshape(-1) for term in self._terms]
        self.register_buffer("fused_atoms", torch.cat(slots) if slots else torch.zeros(0).long())
        self._add_fused_pieces()

    def _add_fused_pieces(self) -> None:
        """Where each gradient piece of the fused kernel goes (see ``_FUSED_PIECES``).

        Buffers (rebuilt from the System, not saved in state dicts), one entry per contribution:
        ``fused_target`` the atom, ``fused_piece`` the row of the concatenated pieces and
        ``fused_sign`` ``(contributions, 1)`` +1 or -1.
        """
        targets, pieces, signs, offset = [], [], [], 0
        for term in self._terms:
            atoms = getattr(self, f"{term}_atoms")
            count = atoms.shape[1]
            for slot, piece, sign in _FUSED_PIECES[term]:
                targets.append(atoms[slot])
                pieces.append(offset + piece * count + torch.arange(count))
                signs.append(torch.full((count,), sign, dtype=torch.float64))
            offset += (1 + max(piece for _, piece, _ in _FUSED_PIECES[term])) * count
        empty = torch.zeros(0, dtype=torch.long)
        self.register_buffer("fused_target", torch.cat(targets) if targets else empty, False)
        self.register_buffer("fused_piece", torch.cat(pieces) if pieces else empty, False)
        signs = torch.cat(signs) if signs else empty.double()
        self.register_buffer("fused_sign", signs.reshape(-1, 1), persistent=False)

    def _add_torsion_series(self, torsions: dict, num_quads: int) -> None:
        """Each quadruplet's Fourier terms as one cosine series in its dihedral angle.

        ``sum_t k_t (1 + cos(n_t phi - delta_t)) = c + sum_m a_m cos(m phi) + b_m sin(m phi)``
        over ``m = 1..max n_t``, so the fused kernel needs only ``cos(phi)`` and ``sin(phi)`` of
        each quadruplet (no atan2, cos or sin) and builds ``cos(m phi)``, ``sin(m phi)`` by angle
        addition. Buffers (not saved in state dicts, rebuilt from the System):
        ``torsion_series_cos``/``_sin`` ``(m, quads, 1)`` hold ``a_m``/``b_m``,
        ``torsion_series_dcos``/``_dsin`` hold ``m a_m``/``m b_m``; ``c`` is ``torsion_k_total``.
        """
        order = np.asarray(torsions["periodicity"], dtype=np.int64) - 1  # >= 0, see reader
        k = np.asarray(torsions["k"], dtype=np.float64)
        phase = np.asarray(torsions["phase"], dtype=np.float64)
        size = int(order.max(initial=0)) + 1
        cosine = np.zeros((size, num_quads, 1))
        sine = np.zeros((size, num_quads, 1))
        # k cos(n phi - delta) = k cos(delta) cos(n phi) + k sin(delta) sin(n phi)
        np.add.at(cosine, (order, torsions["term_to_quad"], 0), k * np.cos(phase))
        np.add.at(sine, (order, torsions["term_to_quad"], 0), k * np.sin(phase))
        multiple = np.arange(1, size + 1, dtype=np.float64).reshape(-1, 1, 1)
        series = {"cos": cosine, "sin": sine, "dcos": multiple * cosine, "dsin": multiple * sine}
        for name, values in series.items():
            self.register_buffer(
                f"torsion_series_{name}", torch.as_tensor(values), persistent=False
            )

    def _add(self, term: str, atoms: np.ndarray, **parameters) -> None:
        """Register the atom indices ``(width, terms)`` and parameter columns of one term type."""
        if len(atoms) == 0:
            return
        self.register_buffer(f"{term}_atoms", _indices(atoms, atoms.shape[1]))
        for key, values in parameters.items():
            self.register_buffer(f"{term}_{key}", _columns(values))
        self._terms.append(term)

    # ------------------------------------------------------------------ evaluation
    # Each term evaluator returns its energy (batch,) in kJ/mol and, when ``grad`` is given (see
    # _scatter), adds its analytic gradient there. Without ``grad`` the evaluators are plain torch ops
    # that autograd differentiates (to any order); with it, one pass gives energy and gradient at a
    # fraction of the cost of autograd's tape.

    def _positions(self, x: Tensor) -> Tensor:
        """``(batch, 3N)`` -> ``(3, N, batch)`` contiguous."""
        return x.reshape(x.shape[0], self.num_atoms, 3).permute(2, 1, 0).contiguous()

    @staticmethod
    def _gather(positions: Tensor, atoms: Tensor) -> list[Vector]:
        """Positions of ``atoms: (width, terms)`` -> ``width`` vectors of ``(terms, batch)``."""
        width, terms = atoms.shape
        picked = positions.index_select(1, atoms.reshape(-1))
        return [
            (picked[0, rows], picked[1, rows], picked[2, rows])
            for rows in (slice(slot * terms, (slot + 1) * terms) for slot in range(width))
        ]

    @staticmethod
    def _scatter(grad: Tensor, atoms: Tensor, g: Vector, sign: int = 1) -> None:
        """Add ``sign * g`` to the gradient rows of ``atoms`` (repeated atoms accumulate).

        ``grad: (2, 3, N, batch)`` holds minus the negative and minus the positive contributions;
        the gradient is ``grad[0] - grad[1]``. Every add then uses ``alpha=-1``, which keeps torch
        on its serial ``index_add_`` kernel: with the default ``alpha=1`` it dispatches to a
        parallel ``scatter_add_`` that stalls for tens of milliseconds per call when another
        process holds a core.
        """
        target = grad[0] if sign < 0 else grad[1]
        for component in range(3):
            target[component].index_add_(0, atoms, g[component], alpha=-1)

    def _term_parameters(self, term: str, like: Tensor, *names: str) -> list[Tensor]:
        return [getattr(self, f"{term}_{name}").to(like) for name in names]

    def _bond(self, positions: Tensor, grad: Tensor | None) -> Tensor:
        xi, xj = self._gather(positions, self.bond_atoms)
        d = difference(xj, xi)
        r = _norm(_dot(d, d))
        k, r0 = self._term_parameters("bond", r, "k", "r0")
        stretch = r - r0
        force_constant = k * stretch  # dU/dr
        if grad is not None:
            # dU/dx_j = dU/dr * d / r; clamping r only matters for coincident atoms (d = 0).
            g = _scale(d, force_constant / r.clamp_min(_floor(r)))
            self._scatter(grad, self.bond_atoms[1], g)
            self._scatter(grad, self.bond_atoms[0], g, sign=-1)
        return 0.5 * (force_constant * stretch).sum(0)

    def _angle(self, positions: Tensor, grad: Tensor | None) -> Tensor:
        xi, xj, xk = self._gather(positions, self.angle_atoms)
        u, v = difference(xi, xj), difference(xk, xj)
        normal = _cross(u, v)
        sine = _norm(_dot(normal, normal))  # |u| |v| sin(theta)
        theta = torch.atan2(sine, _dot(u, v))
        k, theta0 = self._term_parameters("angle", theta, "k", "theta0")
        bend = theta - theta0
        torque = k * bend  # dU/dtheta
        if grad is not None:
            # dtheta/du = u x n / (|u|^2 |n|), dtheta/dv = n x v / (|v|^2 |n|) with n = u x v;
            # zero (a subgradient) for collinear atoms, like autograd through atan2.
            scaled = _scale(normal, torque / sine.clamp_min(_floor(sine)))
            gi = _scale(_cross(u, scaled), _dot(u, u).reciprocal())
            gk = _scale(_cross(scaled, v), _dot(v, v).reciprocal())
            self._scatter(grad, self.angle_atoms[0], gi)
            self._scatter(grad, self.angle_atoms[2], gk)
            self._scatter(grad, self.angle_atoms[1], gi, sign=-1)
            self._scatter(grad, self.angle_atoms[1], gk, sign=-1)
        return 0.5 * (torque * bend).sum(0)

    def _torsion(self, positions: Tensor, grad: Tensor | None) -> Tensor:
        atoms = self.torsion_atoms
        xi, xj, xk, xl = self._gather(positions, atoms)
        b1, b2, b3 = difference(xj, xi), difference(xk, xj), difference(xl, xk)
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        b2_squared = _dot(b2, b2)
        b2_norm = _norm(b2_squared)
        phi = torch.atan2(b2_norm * _dot(b1, n2), _dot(n1, n2))
        phi_terms = phi.index_select(0, self.torsion_term_to_quad)
        k, periodicity, phase = self._term_parameters("torsion", phi, "k", "periodicity", "phase")
        argument = torch.addcmul(-phase, periodicity, phi_terms)
        energy = (k * torch.cos(argument)).sum(0) + self.torsion_k_total.to(phi)
        if grad is not None:
            k_periodicity = self.torsion_k_periodicity.to(phi)
            dphi_terms = k_periodicity * torch.sin(argument)  # -dU/dphi per term
            dphi = torch.zeros_like(phi).index_add_(  # dU/dphi per quadruplet (see _scatter)
                0, self.torsion_term_to_quad, dphi_terms, alpha=-1
            )
            # Blondel & Karplus (1996): gradient of phi without the 1/sin(phi) singularity.
            tiny = _floor(phi)
            weighted = dphi * b2_norm
            gi = _scale(n1, -weighted / _dot(n1, n1).clamp_min(tiny))
            gl = _scale(n2, weighted / _dot(n2, n2).clamp_min(tiny))
            inv_b2 = b2_squared.clamp_min(tiny).reciprocal()
            p = _dot(b1, b2) * inv_b2
            q = _dot(b3, b2) * inv_b2
            one_p, one_q = 1 + p, 1 + q
            gj = tuple(torch.addcmul(q * c, one_p, a, value=-1) for a, c in zip(gi, gl))
            gk = tuple(torch.addcmul(p * a, one_q, c, value=-1) for a, c in zip(gi, gl))
            for index, g in zip(atoms, (gi, gj, gk, gl)):
                self._scatter(grad, index, g)
        return energy

    def _nonbonded(self, positions: Tensor, grad: Tensor | None) -> Tensor:
        xi, xj = self._gather(positions, self.nonbonded_atoms)
        d = difference(xj, xi)
        inv_r2 = _dot(d, d).reciprocal()
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        names = ("repulsion", "dispersion", "coulomb")
        repulsion, dispersion, coulomb = self._term_parameters("nonbonded", inv_r2, *names)
        # (4 eps sigma^12 / r^6 - 4 eps sigma^6) / r^6
        lennard_jones = torch.addcmul(-dispersion, repulsion, inv_r6) * inv_r6
        electrostatic = coulomb * inv_r2.sqrt()
        if grad is not None:
            # (dU/dr) / r = ((24 eps sigma^6 - 48 eps sigma^12 / r^6) / r^6 - q q' / r) / r^2
            dispersion6, repulsion12 = self._term_parameters(
                "nonbonded", inv_r2, "dispersion6", "repulsion12"
            )
            radial = torch.addcmul(dispersion6, repulsion12, inv_r6, value=-1)
            radial = (radial * inv_r6 - electrostatic) * inv_r2
            g = _scale(d, radial)
            self._scatter(grad, self.nonbonded_atoms[1], g)
            self._scatter(grad, self.nonbonded_atoms[0], g, sign=-1)
        return (lennard_jones + electrostatic).sum(0)

    # ------------------------------------------------------------------ fused evaluation
    # The same formulas as the per-term evaluators above, arranged for speed: one gather of every
    # term's atoms, gradient pieces and one index_add_ of them per component, with no in-place
    # updates, so torch.compile can fuse the lot. Each _fused_<term> takes the gathered vectors of
    # its slots and returns its energy (batch,) in kJ/mol and its gradient pieces; _FUSED_PIECES
    # says which piece, with which sign, each slot receives (a piece shared by two slots, e.g.
    # +g and -g of a pair, is computed and stored once).

    def _fused_bond(self, xi: Vector, xj: Vector) -> tuple[Tensor, list[Vector]]:
        d = difference(xj, xi)
        r = _dot(d, d).sqrt()
        k, r0 = self._term_parameters("bond", r, "k", "r0")
        stretch = r - r0
        force_constant = k * stretch
        factor = force_constant / r.clamp_min(_floor(r))
        return 0.5 * (force_constant * stretch).sum(0), [_scale(d, factor)]

    def _fused_angle(self, xi: Vector, xj: Vector, xk: Vector) -> tuple[Tensor, list[Vector]]:
        u, v = difference(xi, xj), difference(xk, xj)
        normal = _cross(u, v)
        sine = _dot(normal, normal).sqrt()
        theta = torch.atan2(sine, _dot(u, v))
        k, theta0 = self._term_parameters("angle", theta, "k", "theta0")
        bend = theta - theta0
        torque = k * bend
        scaled = _scale(normal, torque / sine.clamp_min(_floor(sine)))
        gi = _scale(_cross(u, scaled), _dot(u, u).reciprocal())
        gk = _scale(_cross(scaled, v), _dot(v, v).reciprocal())
        return 0.5 * (torque * bend).sum(0), [gi, gk]  # the middle atom gets -(gi + gk)

    def _fused_torsion(self, xi, xj, xk, xl) -> tuple[Tensor, list[Vector]]:
        b1, b2, b3 = difference(xj, xi), difference(xk, xj), difference(xl, xk)
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        b2_squared = _dot(b2, b2)
        b2_norm = b2_squared.sqrt()
        n1_squared, n2_squared = _dot(n1, n1), _dot(n2, n2)
        # cos(phi), sin(phi) = (n1 . n2, |b2| b1 . n2) / (|n1| |n2|); phi = 0 where undefined
        # (collinear atoms), like atan2(0, 0) on the per-term path.
        product = n1_squared * n2_squared
        defined = product > 0
        inverse = torch.where(defined, product, 1.0).rsqrt()
        cosine = torch.where(defined, _dot(n1, n2) * inverse, 1.0)
        sine = torch.where(defined, b2_norm * _dot(b1, n2) * inverse, 0.0)
        series = self._term_parameters("torsion", cosine, *(f"series_{n}" for n in _SERIES))
        energy, dphi = _cosine_series(cosine, sine, *series)
        energy = energy.sum(0) + self.torsion_k_total.to(cosine)
        tiny = _floor(cosine)
        weighted = dphi * b2_norm
        gi = _scale(n1, -weighted / n1_squared.clamp_min(tiny))
        gl = _scale(n2, weighted / n2_squared.clamp_min(tiny))
        inv_b2 = b2_squared.clamp_min(tiny).reciprocal()
        p, q = _dot(b1, b2) * inv_b2, _dot(b3, b2) * inv_b2
        one_p, one_q = 1 + p, 1 + q
        gj = tuple(torch.addcmul(q * c, one_p, a, value=-1) for a, c in zip(gi, gl))
        gk = tuple(torch.addcmul(p * a, one_q, c, value=-1) for a, c in zip(gi, gl))
        return energy, [gi, gj, gk, gl]

    def _fused_nonbonded(self, xi: Vector, xj: Vector) -> tuple[Tensor, list[Vector]]:
        d = difference(xj, xi)
        inv_r = _dot(d, d).rsqrt()  # one square root and one division per pair
        inv_r2 = inv_r * inv_r
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        repulsion, dispersion, coulomb, dispersion6, repulsion12 = self._term_parameters(
            "nonbonded", inv_r2, "repulsion", "dispersion", "coulomb", "dispersion6", "repulsion12"
        )
        electrostatic = coulomb * inv_r
        energy = torch.addcmul(-dispersion, repulsion, inv_r6) * inv_r6 + electrostatic
        radial = torch.addcmul(dispersion6, repulsion12, inv_r6, value=-1)
        radial = (radial * inv_r6 - electrostatic) * inv_r2
        return energy.sum(0), [_scale(d, radial)]

    def _fused_block(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``U`` in kJ/mol ``(batch,)`` and ``dU/dpositions`` ``(3, N, batch)`` of positions laid
        out ``(3, N, batch)`` (see :meth:`_positions`), fused into one pass over the terms.

        The transposes to and from this layout stay outside (a compiled kernel reading ``x``
        directly would transpose inside every loop).
        """
        picked = positions.index_select(1, self.fused_atoms)
        energy = positions.new_zeros(positions.shape[-1])
        pieces: list[Vector] = []
        start = 0
        for term in self._terms:
            width, terms = getattr(self, f"{term}_atoms").shape
            vectors = [
                (picked[0, rows], picked[1, rows], picked[2, rows])
                for rows in (
                    slice(start + slot * terms, start + (slot + 1) * terms) for slot in range(width)
                )
            ]
            start += width * terms
            term_energy, term_pieces = getattr(self, f"_fused_{term}")(*vectors)
            energy = energy + term_energy
            pieces.extend(term_pieces)
        if not pieces:
            return energy, torch.zeros_like(positions)
        zeros = positions.new_zeros(positions.shape[1:])
        sign = self.fused_sign.to(positions)
        # The per-slot selection and sign fuse into the scatter loop (no copy of the pieces).
        grad = [
            zeros.index_add(
                0,
                self.fused_target,
                torch.cat([piece[c] for piece in pieces]).index_select(0, self.fused_piece) * sign,
            )
            for c in range(3)
        ]
        return energy, torch.stack(grad)

    def _fused_force(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, -du/dx)`` in kT and kT/nm, ``(batch,)`` and ``(batch, 3N)``, from positions laid
        out ``(3, N, batch)``: the fused kernel with the scaling inside (what gets compiled).

        The force is a transposed view of a ``(3N, batch)`` buffer: the caller copies it into
        a contiguous ``(batch, 3N)`` output (ATen's blocked 2-D transpose), which is cheaper
        than the element-by-element permute a compiled kernel writes.
        """
        energy, grad = self._fused_block(positions)
        force = (grad.permute(1, 0, 2).reshape(-1, positions.shape[-1]) / -self.kT).t()
        return energy / self.kT, force

    def _energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u(x), -du/dx)`` in kT and kT/nm, compiled when it pays, no autograd graph.

        See the ``compile`` attribute for the policy; a failing compiled kernel warns and leaves
        this instance on the eager path for good.
        """
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        kernel = self._compiled.kernel(self, x)
        if kernel is not None:
            try:
                return self._run_compiled(kernel, x)
            except Exception as error:  # any compiler or runtime failure: fall back
                self._compiled.fail(error)
        energies, grad = self._evaluate(x, True)
        return self._total(energies, x), grad / -self.kT

    def _run_compiled(self, kernel, x: Tensor) -> tuple[Tensor, Tensor]:
        """The compiled kernel over fixed-size blocks on CPU (one pass elsewhere)."""
        size = self.compile_block if x.device.type == "cpu" else 0
        if not size:
            energy, force = kernel(self._positions(x))
            return energy, force.contiguous()
        energies, forces = x.new_empty(x.shape[0]), x.new_empty(x.shape)
        for start in range(0, x.shape[0], size):
            block = x[start : start + size]
            rows = block.shape[0]
            if rows < size:  # pad with copies of a real row: one compiled shape for all batches
                block = torch.cat([block, block[-1:].expand(size - rows, -1)])
            energy, force = kernel(self._positions(block))
            if rows == x.shape[0]:
                return energy[:rows], force[:rows].contiguous()
            # copy_ of the transposed view takes ATen's blocked transpose (torch.cat does not)
            energies[start : start + rows] = energy[:rows]
            forces[start : start + rows] = force[:rows]
        return energies, forces

    @staticmethod
    def _sum_terms(energies: dict[str, Tensor], x: Tensor) -> Tensor:
        """Sum of the term energies (kJ/mol); zero, still a function of ``x``, without terms."""
        values = list(energies.values())
        if not values:  # e.g. only a CMMotionRemover
            return (x * 0).sum(-1)
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total

    def _evaluate(self, x: Tensor, need_grad: bool) -> tuple[dict[str, Tensor], Tensor | None]:
        """Energy per term type (kJ/mol, each (batch,)) and, if asked, dU/dx (batch, 3N).

        On CPU the batch is processed in blocks of ``block_size`` rows so that the per-term
        intermediates stay in cache (about twice the throughput of one pass at batch 4096).
        """
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        size = self.block_size if x.device.type == "cpu" else 0
        if not size or x.shape[0] <= size:
            return self._evaluate_block(x, need_grad)
        blocks = [self._evaluate_block(block, need_grad) for block in x.split(size)]
        energies = {term: torch.cat([block[0][term] for block in blocks]) for term in self._terms}
        grad = torch.cat([block[1] for block in blocks]) if need_grad else None
        return energies, grad

    def _evaluate_block(self, x: Tensor, need_grad: bool):
        positions = self._positions(x)
        grad = positions.new_zeros((2, *positions.shape)) if need_grad else None
        energies = {term: getattr(self, f"_{term}")(positions, grad) for term in self._terms}
        if grad is not None:
            grad = (grad[0] - grad[1]).permute(2, 1, 0).reshape(x.shape)
        return energies, grad

    def _total(self, energies: dict[str, Tensor], x: Tensor) -> Tensor:
        """Sum of the term energies in kT."""
        return self._sum_terms(energies, x) / self.kT

    def _energy(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _AnalyticGradient.apply(x, self)
        return self._total(self._evaluate(x, False)[0], x)

    def _autograd_energy(self, x: Tensor) -> Tensor:
        """The energy as plain differentiable torch ops (for higher-order derivatives)."""
        return self._total(self._evaluate(x, False)[0], x)

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u(x), -du/dx)`` in one analytic pass (no autograd graph), both detached."""
        if self.validate_args:
            check_tensor("x", x, tuple(self.event_shape))
        with torch.no_grad():
            return self._energy_and_force(x)

    def energy_components(self, x: Tensor) -> dict[str, Tensor]:
        """Dimensionless energy of each term type, ``x: (batch, 3N)`` -> ``{name: (batch,)}``.

        Keys are the OpenMM force names present in the System (``HarmonicBondForce``,
        ``HarmonicAngleForce``, ``PeriodicTorsionForce``, ``NonbondedForce``); forces of the same
        type are summed. The values add up to :meth:`energy` and are differentiable.
        """
        if self.validate_args:
            check_tensor("x", x, tuple(self.event_shape))
        names = {
            "bond": "HarmonicBondForce",
            "angle": "HarmonicAngleForce",
            "torsion": "PeriodicTorsionForce",
            "nonbonded": "NonbondedForce",
        }
        energies = self._evaluate(x, False)[0]
        return {names[term]: value / self.kT for term, value in energies.items()}

    def extra_repr(self) -> str:
        return f"num_atoms={self.num_atoms}, temperature={self.temperature:g}, terms={self._terms}"


class _CompiledKernels:
    """Per-instance compiled fused kernels and the ``compile="auto"`` bookkeeping.

    Keyed by ``(device, dtype)``. Never copied or pickled (a compiled function is neither): a
    copy starts afresh and compiles again by the same policy.
    """

    def __init__(self) -> None:
        self.kernels: dict[tuple, object] = {}
        self.evaluated: dict[tuple, int] = {}
        self.failed: str | None = None

    def __deepcopy__(self, memo) -> _CompiledKernels:
        return _CompiledKernels()

    def __reduce__(self):
        return (_CompiledKernels, ())

    def kernel(self, energy: OpenMMEnergy, x: Tensor):
        """The compiled kernel to use for ``x``, or None for the eager path (counts rows)."""
        mode = energy.compile
        if mode not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {mode!r}")
        if mode is False or self.failed is not None:
            return None
        key = (x.device, x.dtype)
        if key not in self.kernels:
            seen = self.evaluated.get(key, 0)
            self.evaluated[key] = seen + x.shape[0]
            if mode == "auto" and seen < energy.compile_after:
                return None
            cpu = x.device.type == "cpu"  # CPU runs fixed-size blocks; elsewhere any batch
            # One thread in the generated CPU code: its parallel loops over a block are far
            # shorter than their fork/join cost (several times slower with two threads).
            options = {"cpp.threads": 1} if cpu else None
            self.kernels[key] = torch.compile(energy._fused_force, dynamic=not cpu, options=options)
        return self.kernels[key]

    def fail(self, error: Exception) -> None:
        self.failed = f"{type(error).__name__}: {error}"
        self.kernels.clear()
        warnings.warn(
            f"OpenMMEnergy: the compiled energy/force kernel failed ({self.failed}); this "
            "instance evaluates eagerly from now on (same formulas, eager numbers)",
            RuntimeWarning,
            stacklevel=4,
        )


class _AnalyticGradient(torch.autograd.Function):
    """``u(x)`` whose backward uses the analytic gradient computed alongside the energy.

    A double backward (``create_graph=True``) re-evaluates the energy as plain torch ops and
    differentiates that, so higher-order derivatives stay exact.
    """

    @staticmethod
    def forward(ctx, x: Tensor, energy: OpenMMEnergy) -> Tensor:
        u, force = energy._energy_and_force(x.detach())
        ctx.energy = energy
        ctx.save_for_backward(x, force)
        return u

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, force = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient is needed
            with torch.enable_grad():
                u = ctx.energy._autograd_energy(x)
                (gradient,) = torch.autograd.grad(u, x, grad_output, create_graph=True)
            return gradient, None
        return -force * grad_output.unsqueeze(-1), None


# ------------------------------------------------------------------------- OpenMM bridge


class _BridgeFunction(torch.autograd.Function):
    """Energies (kT) of a batch through OpenMM; backward uses OpenMM's forces (first order only)."""

    @staticmethod
    def forward(ctx, x: Tensor, bridge: OpenMMBridgeEnergy) -> Tensor:
        need_forces = ctx.needs_input_grad[0]
        energies, forces = bridge._evaluate(x, need_forces)
        if need_forces:
            ctx.save_for_backward(forces)
        return energies

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        (forces,) = ctx.saved_tensors
        return -forces * grad_output.unsqueeze(-1), None


class OpenMMBridgeEnergy(Energy):
    """Any OpenMM System as an :class:`Energy`, evaluated by OpenMM one configuration at a time.

    The fallback for what :class:`OpenMMEnergy` cannot express (cutoffs, periodic boxes, implicit
    solvent, custom forces, virtual sites, ...). Each call loops over the batch with one OpenMM
    ``Context`` (``setPositions`` + ``getState``), so it is much slower than :class:`OpenMMEnergy`
    for large batches. Gradients come from OpenMM's forces (``du/dx = -F / kT``); they are first
    order only (a double backward raises). Results follow the input's dtype and device; OpenMM
    itself computes in its platform's precision (double on ``Reference``, mixed on ``CPU``).

    Periodic Systems use the System's default box vectors. With virtual sites, their positions
    are recomputed from their parent atoms before each evaluation, so the entries of ``x`` for
    virtual sites are ignored (zero gradient).

    Args:
        system: the ``openmm.System`` (copied).
        temperature: temperature in kelvin (> 0), or an ``openmm.unit`` temperature.
        platform: OpenMM platform name, e.g. ``"Reference"`` (double precision) or ``"CPU"``.
        platform_properties: optional OpenMM platform properties (e.g. ``{"Threads": "1"}``).
        validate_args: check input shape and finiteness on every call.

    Attributes:
        system, temperature, kT, num_atoms: as for :class:`OpenMMEnergy`.
        context: the OpenMM ``Context`` used for evaluation.

    Example:
        >>> import pytest; openmm = pytest.importorskip("openmm")
        >>> system = openmm.System()
        >>> for _ in range(2):
        ...     _ = system.addParticle(1.0)
        >>> bond = openmm.CustomBondForce("0.5 * 1000 * (r - 0.1)^2")
        >>> _ = bond.addBond(0, 1, [])
        >>> _ = system.addForce(bond)
        >>> energy = OpenMMBridgeEnergy(system, temperature=300.0)
        >>> x = torch.tensor([[0.0, 0.0, 0.0, 0.12, 0.0, 0.0]], dtype=torch.float64)
        >>> round(float(energy.energy(x) * energy.kT), 6)
        0.2
    """

    def __init__(
        self,
        system,
        temperature: float = 300.0,
        *,
        platform: str = "Reference",
        platform_properties: dict[str, str] | None = None,
        validate_args: bool = True,
    ):
        openmm = import_openmm()
        num_atoms = _check_system(system, openmm)
        temperature = _check_temperature(temperature)
        super().__init__(3 * num_atoms, validate_args=validate_args)
        names = [
            openmm.Platform.getPlatform(i).getName()
            for i in range(openmm.Platform.getNumPlatforms())
        ]
        if platform not in names:
            raise ValueError(
                f"platform must be one of the available OpenMM platforms {names}, got {platform!r}"
            )
        self.system = copy.deepcopy(system)
        self.temperature = temperature
        self.num_atoms = num_atoms
        self.kT = _kt(temperature, openmm)
        self.platform = platform
        self.platform_properties = dict(platform_properties or {})
        self._virtual_sites = [i for i in range(num_atoms) if system.isVirtualSite(i)]
        self._make_context()

    def _make_context(self) -> None:
        openmm = import_openmm()
        unit = openmm.unit
        self._integrator = openmm.VerletIntegrator(0.001)  # never stepped: a Context needs one
        self.context = openmm.Context(
            self.system,
            self._integrator,
            openmm.Platform.getPlatformByName(self.platform),
            self.platform_properties,
        )
        self._energy_unit = unit.kilojoule_per_mole
        self._force_unit = unit.kilojoule_per_mole / unit.nanometer

    def __getstate__(self):
        # An OpenMM Context cannot be pickled or copied: drop it and rebuild it on load.
        state = self.__dict__.copy()
        for key in ("context", "_integrator", "_energy_unit", "_force_unit"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._make_context()

    def _evaluate(self, x: Tensor, need_forces: bool) -> tuple[Tensor, Tensor | None]:
        """Energies ``(batch,)`` in kT and, if asked, forces ``(batch, 3N)`` in kT/nm."""
        positions = x.detach().to(device="cpu", dtype=torch.float64).reshape(-1, self.num_atoms, 3)
        positions = positions.numpy()
        energies = np.empty(len(positions))
        forces = np.empty((len(positions), self.num_atoms, 3)) if need_forces else None
        for index, configuration in enumerate(positions):
            self.context.setPositions(configuration)
            if self._virtual_sites:
                self.context.computeVirtualSites()
            state = self.context.getState(getEnergy=True, getForces=need_forces)
            energies[index] = state.getPotentialEnergy().value_in_unit(self._energy_unit)
            if need_forces:
                forces[index] = state.getForces(asNumpy=True).value_in_unit(self._force_unit)
        out_energies = torch.as_tensor(energies / self.kT).to(dtype=x.dtype, device=x.device)
        if not need_forces:
            return out_energies, None
        # OpenMM has already passed the forces on virtual sites on to their parent atoms but still
        # reports them; the energy does not depend on the (recomputed) virtual-site inputs.
        forces[:, self._virtual_sites] = 0.0
        out_forces = torch.as_tensor(forces.reshape(len(positions), -1) / self.kT)
        return out_energies, out_forces.to(dtype=x.dtype, device=x.device)

    def _energy(self, x: Tensor) -> Tensor:
        return _BridgeFunction.apply(x, self)

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u(x), -du/dx)`` from a single pass through OpenMM (no autograd needed)."""
        if self.validate_args:
            check_tensor("x", x, tuple(self.event_shape))
        return self._evaluate(x, True)

    def extra_repr(self) -> str:
        return (
            f"num_atoms={self.num_atoms}, temperature={self.temperature:g}, "
            f"platform={self.platform!r}"
        )
