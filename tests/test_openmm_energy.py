"""OpenMM System -> torch energy: agreement with OpenMM's Reference platform, the bridge, errors."""

from __future__ import annotations

import copy
import importlib.util
import math
import pickle
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmtools")  # only its shipped data files are read
unit = openmm.unit

from normflows_sci.energies.molecular.openmm import (  # noqa: E402
    ONE_4PI_EPS0,
    OpenMMBridgeEnergy,
    OpenMMEnergy,
)
from normflows_sci.energies.molecular.systems import alanine_dipeptide, dihedral  # noqa: E402

RTOL = 1e-6
NUM_CONFIGS = 16
FORCE_NAMES = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce")
KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@pytest.fixture(scope="module")
def ala():
    return alanine_dipeptide(300.0)


@pytest.fixture(scope="module")
def configs(ala):
    """16 perturbed copies of the shipped structure, noise 0.005-0.02 nm."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.005, 0.02, NUM_CONFIGS, dtype=torch.float64).unsqueeze(1)
    noise = torch.randn(NUM_CONFIGS, 66, generator=generator, dtype=torch.float64)
    return ala.positions + scales * noise


def reference(system, x: torch.Tensor, groups=None):
    """OpenMM Reference-platform energies (kJ/mol) and forces (kJ/mol/nm) of ``x: (n, 3N)``."""
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    energies, forces = [], []
    for row in x.reshape(len(x), -1, 3).numpy():
        context.setPositions(row)
        kwargs = {} if groups is None else {"groups": groups}
        state = context.getState(getEnergy=True, getForces=True, **kwargs)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ_NM).reshape(-1))
    return torch.tensor(np.array(energies)), torch.tensor(np.array(forces))


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row relative error ||a - b|| / ||b|| (rows = configurations)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


@pytest.fixture(scope="module")
def openmm_reference(ala, configs):
    return reference(ala.system, configs)


def test_energy_and_forces_match_openmm_reference(ala, configs, openmm_reference):
    energies, forces = openmm_reference
    u, force = ala.energy_and_force(configs)
    assert u.shape == (NUM_CONFIGS,) and force.shape == configs.shape
    assert relative(u * ala.kT, energies).max() < RTOL
    assert relative(force * ala.kT, forces).max() < RTOL
    # The autograd path (energy + backward through the analytic-gradient Function) agrees.
    leaf = configs.clone().requires_grad_(True)
    ala.energy(leaf).sum().backward()
    assert torch.allclose(-leaf.grad, force, rtol=1e-12, atol=1e-9)
    assert torch.allclose(ala.log_prob(configs), -u, rtol=1e-12, atol=0)


def test_each_force_type_matches_openmm(ala, configs):
    system = openmm.XmlSerializer.clone(ala.system)
    groups = {}
    for group, force in enumerate(system.getForces()):
        force.setForceGroup(group)
        groups[type(force).__name__] = group
    components = ala.energy_components(configs)
    assert set(components) == set(FORCE_NAMES)
    for name in FORCE_NAMES:
        energies, forces = reference(system, configs, groups={groups[name]})
        assert relative(components[name] * ala.kT, energies).max() < RTOL, name
        leaf = configs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ala.energy_components(leaf)[name].sum(), leaf)
        assert relative(-grad * ala.kT, forces).max() < RTOL, name
    total = sum(components.values())
    assert torch.allclose(total, ala.energy(configs), rtol=1e-12)


def test_analytic_gradient_matches_autograd_and_second_order(ala, configs):
    x = configs[:4]
    _, force = ala.energy_and_force(x)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ala._autograd_energy(leaf).sum(), leaf)
    assert torch.allclose(-grad, force, rtol=1e-10, atol=1e-8)
    # Hessian-vector product through create_graph=True against central differences of the force.
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ala.energy(leaf).sum(), leaf, create_graph=True)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    (hvp,) = torch.autograd.grad((grad * direction).sum(), leaf)
    eps = 1e-6
    plus = ala.energy_and_force(x + eps * direction)[1]
    minus = ala.energy_and_force(x - eps * direction)[1]
    finite_difference = -(plus - minus) / (2 * eps)
    assert relative(hvp, finite_difference).max() < 1e-5


def test_blocked_evaluation_matches_single_pass(ala, configs):
    # Batches larger than block_size are split on CPU; the result must not depend on it.
    x = configs.repeat(40, 1)  # 640 rows > 512
    u, force = ala.energy_and_force(x)
    ala.block_size = 0
    try:
        u_one, force_one = ala.energy_and_force(x)
    finally:
        ala.block_size = OpenMMEnergy.block_size
    assert torch.allclose(u, u_one, rtol=1e-14, atol=0)
    assert torch.allclose(force, force_one, rtol=1e-14, atol=1e-12)


def test_energy_scales_with_inverse_temperature(ala, configs):
    hot = alanine_dipeptide(600.0)
    r = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    assert ala.temperature == 300.0 and math.isclose(ala.kT, r * 300.0, rel_tol=1e-15)
    assert math.isclose(hot.kT, 2 * ala.kT, rel_tol=1e-15)
    assert torch.allclose(hot.energy(configs), ala.energy(configs) / 2, rtol=1e-14)
    assert torch.allclose(hot.force(configs), ala.force(configs) / 2, rtol=1e-12, atol=0)
    with_unit = OpenMMEnergy(ala.system, temperature=600.0 * unit.kelvin)
    assert with_unit.temperature == 600.0 and with_unit.kT == hot.kT
    assert OpenMMEnergy(ala.system, temperature=np.float32(600.0)).kT == hot.kT


def test_coulomb_constant_is_openmms():
    # Two opposite unit charges 1 nm apart, nothing else: U = -ONE_4PI_EPS0 exactly as OpenMM.
    system = openmm.System()
    force = openmm.NonbondedForce()
    for charge in (1.0, -1.0):
        system.addParticle(1.0)
        force.addParticle(charge, 0.1, 0.0)
    system.addForce(force)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    energies, _ = reference(system, x)
    assert abs(float(energies[0]) + ONE_4PI_EPS0) < 1e-12
    energy = OpenMMEnergy(system)
    assert abs(float(energy.energy(x)) * energy.kT + ONE_4PI_EPS0) < 1e-12


def test_torsion_sign_convention_matches_openmm():
    """Alanine's phases are 0 or pi (even in phi); an odd phase exposes a sign error."""
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 1, 2, 3, 1, 1.0, 5.0)
    torsion.addTorsion(0, 1, 2, 3, 3, -0.4, 2.0)
    system.addForce(torsion)
    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    energies, forces = reference(system, x)
    energy = OpenMMEnergy(system)
    u, force = energy.energy_and_force(x)
    assert relative(u * energy.kT, energies).max() < RTOL
    assert relative(force * energy.kT, forces).max() < RTOL
    phi = dihedral(x, 0, 1, 2, 3)
    expected = 5.0 * (1 + torch.cos(phi - 1.0)) + 2.0 * (1 + torch.cos(3 * phi + 0.4))
    assert torch.allclose(u * energy.kT, expected, rtol=1e-12)


def test_gradients_finite_for_collinear_atoms():
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    angle = openmm.HarmonicAngleForce()
    angle.addAngle(0, 1, 2, 1.9, 300.0)
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 1, 2, 3, 2, 0.3, 4.0)
    system.addForce(angle)
    system.addForce(torsion)
    energy = OpenMMEnergy(system)
    straight = torch.tensor([[0.0, 0, 0, 0.1, 0, 0, 0.2, 0, 0, 0.2, 0.1, 0]], dtype=torch.float64)
    folded = straight.clone()
    folded[0, 6] = 0.0  # angle exactly 0
    for x in (straight, folded):
        u, force = energy.energy_and_force(x)
        assert torch.isfinite(u).all() and torch.isfinite(force).all()
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy._autograd_energy(leaf).sum(), leaf)
        assert torch.isfinite(grad).all()


def test_motion_remover_only_is_zero_energy():
    system = openmm.System()
    system.addParticle(1.0)
    system.addForce(openmm.CMMotionRemover())
    energy = OpenMMEnergy(system)
    x = torch.randn(3, 3, dtype=torch.float64)
    u, force = energy.energy_and_force(x)
    assert torch.equal(u, torch.zeros(3, dtype=torch.float64)) and torch.equal(force, 0 * x)


def _with_force(system, force):
    clone = openmm.XmlSerializer.clone(system)
    clone.addForce(force)
    return clone


def test_unsupported_systems_raise_clear_errors(ala):
    external = openmm.CustomExternalForce("x^2")
    external.addParticle(0, [])
    with pytest.raises(ValueError, match=r"CustomExternalForce.*OpenMMBridgeEnergy"):
        OpenMMEnergy(_with_force(ala.system, external))

    cutoff = openmm.XmlSerializer.clone(ala.system)
    for force in cutoff.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(ValueError, match=r"CutoffNonPeriodic.*OpenMMBridgeEnergy"):
        OpenMMEnergy(cutoff)

    periodic = openmm.XmlSerializer.clone(ala.system)
    periodic.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*(3.0 * row)) for row in np.eye(3)))
    for force in periodic.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setNonbondedMethod(openmm.NonbondedForce.PME)
    with pytest.raises(ValueError, match="periodic"):
        OpenMMEnergy(periodic)

    virtual = openmm.XmlSerializer.clone(ala.system)
    virtual.setVirtualSite(21, openmm.TwoParticleAverageSite(18, 19, 0.5, 0.5))
    with pytest.raises(ValueError, match="virtual sites"):
        OpenMMEnergy(virtual)

    with pytest.raises(TypeError, match=r"openmm\.System"):
        OpenMMEnergy("not a system")
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(ala.system, temperature=-1.0)
    with pytest.raises(ValueError, match="platform"):
        OpenMMBridgeEnergy(ala.system, platform="NoSuchPlatform")


def test_bad_input_shapes_raise(ala):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 66\)"):
        ala.energy(torch.zeros(2, 65, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        ala.energy(torch.zeros(66, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        ala.energy_and_force(torch.full((1, 66), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError):
        ala.energy(np.zeros((1, 66)))
    with pytest.raises(TypeError, match="floating-point"):
        ala.energy(torch.zeros(1, 66, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be a floating"):
        dihedral(torch.zeros(2, 65), 0, 1, 2, 3)
    with pytest.raises(ValueError, match="distinct"):
        dihedral(torch.zeros(2, 66), 0, 1, 1, 3)
    with pytest.raises(ValueError, match=r"\[0, 22\)"):
        dihedral(torch.zeros(2, 66), 0, 1, 2, 22)


def test_bridge_matches_openmm_and_its_gradient_is_minus_force(ala, configs, openmm_reference):
    energies, forces = openmm_reference
    bridge = alanine_dipeptide(300.0, bridge=True)
    assert isinstance(bridge, OpenMMBridgeEnergy) and bridge.kT == ala.kT
    x = configs[:6]
    u, force = bridge.energy_and_force(x)
    assert relative(u * bridge.kT, energies[:6]).max() < 1e-12
    assert relative(force * bridge.kT, forces[:6]).max() < 1e-12
    leaf = x.clone().requires_grad_(True)
    bridge.energy(leaf).mul(torch.arange(1.0, 7.0, dtype=x.dtype)).sum().backward()
    assert torch.allclose(leaf.grad, -force * torch.arange(1.0, 7.0, dtype=x.dtype)[:, None])
    # float32 in -> float32 out; copies rebuild their Context.
    assert bridge.energy(x.float()).dtype == torch.float32
    for clone in (copy.deepcopy(bridge), pickle.loads(pickle.dumps(bridge))):
        assert torch.equal(clone.energy(x), bridge.energy(x))


def test_bridge_evaluates_what_the_torch_energy_cannot(ala, configs):
    external = openmm.CustomExternalForce("0.5 * 100 * (x^2 + y^2 + z^2)")
    for atom in range(ala.num_atoms):
        external.addParticle(atom, [])
    bridge = OpenMMBridgeEnergy(_with_force(ala.system, external), 300.0)
    x = configs[:3]
    u, force = bridge.energy_and_force(x)
    restraint = 50.0 * x.square().sum(1) / ala.kT
    assert torch.allclose(u, ala.energy(x) + restraint, rtol=1e-10)
    assert torch.allclose(force, ala.force(x) - 100.0 * x / ala.kT, rtol=1e-9, atol=1e-6)


def test_bridge_with_virtual_site_gradient_is_finite_difference():
    system = openmm.System()
    for mass in (12.0, 12.0, 0.0):
        system.addParticle(mass)
    system.setVirtualSite(2, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    external = openmm.CustomExternalForce("10 * x^2 + 5 * y")
    for atom in range(3):
        external.addParticle(atom, [])
    system.addForce(external)
    bridge = OpenMMBridgeEnergy(system)
    x = torch.tensor([[0.1, 0.2, 0.3, 0.5, -0.1, 0.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    u, force = bridge.energy_and_force(x)
    # The virtual site sits at the midpoint (0.3, 0.05, 0.15) whatever x says about it.
    assert math.isclose(float(u) * bridge.kT, 10 * (0.01 + 0.25 + 0.09) + 5 * 0.15, rel_tol=1e-12)
    eps = 1e-6
    steps = eps * torch.eye(9, dtype=torch.float64)
    numeric = -(bridge.energy(x + steps) - bridge.energy(x - steps)) / (2 * eps)
    assert torch.allclose(force[0], numeric, atol=1e-6)
    assert torch.equal(force[0, 6:], torch.zeros(3, dtype=torch.float64))


def test_float32_inputs(ala, configs, openmm_reference):
    energies, forces = openmm_reference
    u, force = ala.energy_and_force(configs.float())
    assert u.dtype == force.dtype == torch.float32
    assert relative(u.double() * ala.kT, energies).max() < 1e-5
    assert relative(force.double() * ala.kT, forces).max() < 1e-4
    leaf = configs.float().requires_grad_(True)
    ala.energy(leaf).sum().backward()
    assert leaf.grad.dtype == torch.float32
    assert torch.allclose(-leaf.grad, force, rtol=1e-5, atol=1e-3)


def test_device(ala, configs, device):
    x = configs.to(device)
    energy = copy.deepcopy(ala).to(device)
    u, force = energy.energy_and_force(x)
    assert u.device.type == force.device.type == device.type
    expected_u, expected_force = ala.energy_and_force(configs)
    assert torch.allclose(u.cpu(), expected_u, rtol=1e-10)
    assert torch.allclose(force.cpu(), expected_force, rtol=1e-8, atol=1e-6)


def test_dihedral_matches_mdtraj(ala, configs):
    mdtraj = pytest.importorskip("mdtraj")
    x = ala.positions + 0.1 * torch.randn(
        32, 66, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    trajectory = mdtraj.Trajectory(
        x.reshape(-1, 22, 3).numpy(), mdtraj.Topology.from_openmm(ala.topology)
    )
    expected = torch.as_tensor(
        mdtraj.compute_dihedrals(trajectory, [ala.phi_atoms, ala.psi_atoms]), dtype=torch.float64
    )
    ours = torch.stack([dihedral(x, *ala.phi_atoms), dihedral(x, *ala.psi_atoms)], dim=1)
    wrapped = torch.remainder(ours - expected + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-5  # mdtraj computes in float32
    assert ((ours >= -math.pi) & (ours < math.pi)).all()
    assert len(set(np.sign(expected.numpy().ravel()))) == 2  # both signs exercised
    # exactly pi maps to -pi
    flat = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 1, 0, -1, 1, 0]], dtype=torch.float64)
    assert float(dihedral(flat, 0, 1, 2, 3)) == -math.pi


def test_alanine_dipeptide_attributes_and_no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("alanine_dipeptide() tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    energy = alanine_dipeptide(310.0)
    assert isinstance(energy, OpenMMEnergy) and energy.temperature == 310.0
    assert energy.num_atoms == 22 and energy.event_shape == (66,)
    assert energy.system.getNumConstraints() == 0
    assert energy.topology.getNumAtoms() == 22
    assert energy.positions.shape == (1, 66) and energy.positions.dtype == torch.float64
    atoms = list(energy.topology.atoms())
    phi = [(atoms[i].residue.name, atoms[i].name) for i in energy.phi_atoms]
    psi = [(atoms[i].residue.name, atoms[i].name) for i in energy.psi_atoms]
    assert energy.phi_atoms == (4, 6, 8, 14) and energy.psi_atoms == (6, 8, 14, 16)
    assert phi == [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C")]
    assert psi == [("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    assert energy.atom_names == [atom.name for atom in atoms]
    # The shipped structure is a low-energy one: every force is small compared to a clash.
    assert float(energy.energy(energy.positions)) < 0


def test_module_imports_without_openmm(monkeypatch):
    """The module must import without OpenMM and fail at construction with the install hint."""
    path = Path(importlib.util.find_spec("normflows_sci.energies.molecular.openmm").origin)
    for name in [m for m in sys.modules if m == "openmm" or m.startswith("openmm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "openmm", None)  # makes `import openmm` fail
    spec = importlib.util.spec_from_file_location("_openmm_energy_without_openmm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match=r'pip install "normflows_sci\[molecular\]"'):
        module.OpenMMEnergy(None)
    with pytest.raises(ImportError, match="normflows_sci"):
        module.OpenMMBridgeEnergy(None)


def test_alanine_dipeptide_without_openmmtools_raises_install_hint(monkeypatch):
    from normflows_sci.energies.molecular import systems

    monkeypatch.setattr(systems.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"openmmtools.*normflows_sci\[molecular\]"):
        alanine_dipeptide()


def test_molecular_modules_import_no_private_names_from_each_other():
    """Old code: systems.py imported ``_dihedral_angle``, ``_import_openmm`` and ``_sub`` from
    openmm.py (private names crossing modules)."""
    import ast

    import normflows_sci.energies.molecular as molecular

    for path in Path(molecular.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normflows_sci"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


# ------------------------------------------------------------------ fused / compiled fast path


def _random_configs(ala, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 66, generator=generator, dtype=torch.float64)
    return ala.positions + 0.03 * noise


def _eager(ala) -> OpenMMEnergy:
    energy = copy.deepcopy(ala)
    energy.compile = False
    return energy


def test_fused_path_matches_reference_path_float64(ala):
    """The fused kernel (what gets compiled) against the per-term reference evaluators."""
    x = _random_configs(ala, 37, seed=5)
    energy, grad = ala._fused_block(ala._positions(x))
    terms, reference_grad = ala._evaluate(x, True)
    reference_energy = sum(terms.values())
    assert torch.allclose(energy, reference_energy, rtol=1e-10, atol=0)
    grad = grad.permute(2, 1, 0).reshape(x.shape)
    assert relative(grad, reference_grad).max() < 1e-10


def test_compiled_path_is_used_after_compile_after_configs(ala, monkeypatch):
    """compile='auto' switches after compile_after rows; padded CPU blocks give the same rows."""
    compiled = []

    def fake_compile(function, **options):
        compiled.append(options)

        def kernel(positions):
            kernel.calls += 1
            return function(positions)

        kernel.calls = 0
        return kernel

    monkeypatch.setattr(torch, "compile", fake_compile)
    energy = copy.deepcopy(ala)
    energy.compile, energy.compile_after, energy.compile_block = "auto", 20, 16
    x = _random_configs(ala, 21, seed=6)  # 21 rows: one full block of 16 and one padded block
    expected_u, expected_force = _eager(ala).energy_and_force(x)
    u, force = energy.energy_and_force(x)  # 21 rows seen, not yet 20 before this call: eager
    assert not compiled and torch.equal(u, expected_u) and torch.equal(force, expected_force)
    u, force = energy.energy_and_force(x)
    assert compiled == [{"dynamic": False, "options": {"cpp.threads": 1}}]  # CPU: one thread
    kernel = energy._compiled.kernels[(x.device, x.dtype)]
    assert kernel.calls == 2
    assert torch.allclose(u, expected_u, rtol=1e-10, atol=0)
    assert relative(force, expected_force).max() < 1e-10
    # The autograd path's backward uses the same kernel.
    leaf = x.clone().requires_grad_(True)
    energy.energy(leaf).sum().backward()
    assert kernel.calls == 4 and relative(-leaf.grad, expected_force).max() < 1e-10
    # One block (no cat): the kernel's transposed force view is returned contiguous.
    u, force = energy.energy_and_force(x[:16])
    assert force.is_contiguous() and relative(force, expected_force[:16]).max() < 1e-10
    # Copies and pickles drop the kernels (a compiled function is neither) and still evaluate.
    for clone in (copy.deepcopy(energy), pickle.loads(pickle.dumps(energy))):
        assert not clone._compiled.kernels
        assert torch.allclose(clone.energy_and_force(x)[0], expected_u, rtol=1e-10, atol=0)


def test_failing_compiled_path_falls_back_with_identical_numbers(ala, monkeypatch):
    def broken_compile(function, **options):
        def kernel(positions):
            raise RuntimeError("no working C++ compiler")

        return kernel

    monkeypatch.setattr(torch, "compile", broken_compile)
    energy = copy.deepcopy(ala)
    energy.compile = True
    x = _random_configs(ala, 9, seed=7)
    expected_u, expected_force = _eager(ala).energy_and_force(x)
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler.*eagerly"):
        u, force = energy.energy_and_force(x)
    assert torch.equal(u, expected_u) and torch.equal(force, expected_force)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; from then on eager without trying again
        u, force = energy.energy_and_force(x)
        leaf = x.clone().requires_grad_(True)
        energy.energy(leaf).sum().backward()
    assert torch.equal(u, expected_u) and torch.equal(force, expected_force)
    assert torch.allclose(-leaf.grad, expected_force, rtol=1e-14, atol=0)


def test_compile_setting_is_validated(ala):
    energy = copy.deepcopy(ala)
    energy.compile = "yes"
    with pytest.raises(ValueError, match=r"compile must be True, False or 'auto', got 'yes'"):
        energy.energy_and_force(ala.positions)


def test_fused_torsion_series_matches_openmm_and_eager_path():
    """The fused kernel sums each quadruplet's Fourier terms into one cosine series in phi
    (angle addition, no atan2): periodicities 1..6 (several on one quadruplet), odd phases and
    collinear atoms (phi undefined: both paths take phi = 0) must match OpenMM and the eager path."""
    system = openmm.System()
    for _ in range(5):
        system.addParticle(12.0)
    torsion = openmm.PeriodicTorsionForce()
    for order, phase, k in ((1, 1.0, 5.0), (3, -0.4, 2.0), (6, 2.5, 0.7), (4, 0.3, 1.1)):
        torsion.addTorsion(0, 1, 2, 3, order, phase, k)
    torsion.addTorsion(1, 2, 3, 4, 2, 0.9, 3.0)
    torsion.addTorsion(1, 2, 3, 4, 5, -1.7, 0.5)
    system.addForce(torsion)
    energy = OpenMMEnergy(system)
    x = torch.randn(16, 15, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    straight = torch.tensor([[0.0, 0, 0, 0.1, 0, 0, 0.2, 0, 0, 0.2, 0.1, 0, 0.3, 0.1, 0.1]])
    x = torch.cat([x, straight.double()])
    u, grad = energy._fused_block(energy._positions(x))
    grad = grad.permute(2, 1, 0).reshape(x.shape)
    energies, forces = reference(system, x[:16])
    assert relative(u[:16], energies).max() < 1e-12
    assert relative(-grad[:16], forces).max() < 1e-10
    terms, eager_grad = energy._evaluate(x, True)
    assert torch.allclose(u, terms["torsion"], rtol=1e-12, atol=0)
    assert torch.isfinite(grad).all() and relative(grad, eager_grad).max() < 1e-10


@pytest.mark.parametrize("order", [0, -2])
def test_nonpositive_torsion_periodicity_is_refused(order):
    """OpenMM's own Context refuses it; evaluating it anyway would be a System OpenMM never runs."""
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 1, 2, 3, order, 0.3, 1.0)
    system.addForce(torsion)
    with pytest.raises(ValueError, match=rf"term 0 \(0, 1, 2, 3\).*positive integer, got {order}"):
        OpenMMEnergy(system)
