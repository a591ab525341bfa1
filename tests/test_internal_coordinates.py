"""Internal coordinates: exact round trips, Jacobians, rigid-motion removal, alanine dipeptide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normflows_sci.energies.molecular.internal import (
    ALANINE_DIPEPTIDE_PHI,
    ALANINE_DIPEPTIDE_PHI_ATOMS,
    ALANINE_DIPEPTIDE_PSI,
    ALANINE_DIPEPTIDE_PSI_ATOMS,
    alanine_dipeptide_z_matrix,
)
from normflows_sci.flows import internal_coordinate_flow
from normflows_sci.transforms import CircularShift, InternalCoordinates, wrap_angle

# Third atom bonded to atom 1 (axis -u) and, in the second, to the root (axis +u); branched trees.
SMALL_Z_MATRICES = {
    "third_on_second": [
        [0, -1, -1, -1],
        [1, 0, -1, -1],
        [2, 1, 0, -1],
        [3, 2, 1, 0],
        [4, 1, 0, 2],
        [5, 0, 1, 3],
    ],
    "third_on_root_permuted": [
        [3, -1, -1, -1],
        [0, 3, -1, -1],
        [5, 3, 0, -1],
        [1, 0, 3, 5],
        [2, 5, 3, 0],
        [4, 1, 0, 3],
        [6, 2, 5, 1],
    ],
}


def _random_positions(num_atoms, batch, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, 3 * num_atoms, generator=generator, dtype=dtype)


def _random_rotations(batch, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(batch, 3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # proper rotations only


def _rigid_motion(x, seed=0):
    batch = x.shape[0]
    rotation = _random_rotations(batch, x.dtype, seed)
    shift = torch.randn(
        batch, 1, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype
    )
    moved = x.reshape(batch, -1, 3) @ rotation.transpose(-1, -2) + 3.0 * shift
    return moved.reshape(batch, -1)


def _jacobian(function, point):
    return torch.autograd.functional.jacobian(function, point)


@pytest.fixture(scope="module")
def alanine():
    """openmmtools' alanine dipeptide: (topology, positions in nm as a float64 (1, 66) tensor)."""
    pytest.importorskip("openmmtools")
    from openmm import unit
    from openmmtools import testsystems

    system = testsystems.AlanineDipeptideVacuum(constraints=None)
    positions = np.asarray(system.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    return system.topology, torch.from_numpy(positions).reshape(1, -1)


def _perturbed(positions, batch, scale=0.01, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, positions.shape[1], generator=generator, dtype=positions.dtype)
    return positions + scale * noise


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(SMALL_Z_MATRICES))
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_keep_round_trip_and_opposite_logabsdet(name, dtype, tol):
    z_matrix = SMALL_Z_MATRICES[name]
    transform = InternalCoordinates(z_matrix, rigid="keep")
    x = _random_positions(len(z_matrix), 64, dtype, seed=1)
    z, logabsdet = transform(x)
    assert z.shape == x.shape and z.dtype == dtype and logabsdet.shape == (64,)
    x_back, inverse_logabsdet = transform.inverse(z)
    torch.testing.assert_close(x_back, x, atol=tol, rtol=0)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=tol * 10, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_alanine_round_trip_both_modes(alanine, dtype, tol):
    _topology, positions = alanine
    x = _perturbed(positions, 32, seed=2).to(dtype)
    keep = InternalCoordinates(alanine_dipeptide_z_matrix(), rigid="keep")
    z, logabsdet = keep(x)
    x_back, inverse_logabsdet = keep.inverse(z)
    torch.testing.assert_close(x_back, x, atol=tol, rtol=0)  # nm
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=tol * 100, rtol=tol)

    remove = InternalCoordinates(alanine_dipeptide_z_matrix())
    ic, logabsdet = remove(x)
    assert ic.shape == (32, 60)
    x_canonical, inverse_logabsdet = remove.inverse(ic)
    ic_back, logabsdet_back = remove(x_canonical)
    torch.testing.assert_close(ic_back, ic, atol=tol, rtol=0)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=tol * 100, rtol=tol)
    torch.testing.assert_close(logabsdet_back, logabsdet, atol=tol * 100, rtol=tol)
    # Same molecule up to a rigid motion: all interatomic distances agree.
    torch.testing.assert_close(
        torch.cdist(x_canonical.reshape(32, 22, 3), x_canonical.reshape(32, 22, 3)),
        torch.cdist(x.reshape(32, 22, 3), x.reshape(32, 22, 3)),
        atol=tol * 10,
        rtol=0,
    )


# ------------------------------------------------------------------------------------ Jacobians
@pytest.mark.parametrize("name", sorted(SMALL_Z_MATRICES))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_keep_logabsdet_matches_autograd_jacobian(name, direction):
    z_matrix = SMALL_Z_MATRICES[name]
    transform = InternalCoordinates(z_matrix, rigid="keep")
    points = _random_positions(len(z_matrix), 4, seed=3)
    if direction == "inverse":
        points, _ = transform(points)
    step = transform if direction == "forward" else transform.inverse
    _, logabsdet = step(points)
    for point, value in zip(points, logabsdet):
        jacobian = _jacobian(lambda row: step(row[None])[0][0], point)
        torch.testing.assert_close(value, torch.linalg.slogdet(jacobian)[1], atol=1e-9, rtol=1e-9)


def test_alanine_keep_inverse_jacobian(alanine):
    _topology, positions = alanine
    transform = InternalCoordinates(alanine_dipeptide_z_matrix(), rigid="keep")
    z, _ = transform(_perturbed(positions, 2, seed=4))
    _, logabsdet = transform.inverse(z)
    for point, value in zip(z, logabsdet):
        jacobian = _jacobian(lambda row: transform.inverse(row[None])[0][0], point)
        torch.testing.assert_close(value, torch.linalg.slogdet(jacobian)[1], atol=1e-8, rtol=1e-8)


def _rigid_completed_logabsdet(transform, ic):
    """log|det [dx/d(ic), translations, rotations]| at x = inverse(ic): a volume check.

    The inverse Jacobian (3N x (3N-6)) completed by the six unit-speed rigid-motion generators
    (translations e_k and rotations e_k x x_i) has |det| = |det dx/d(keep coordinates)| / sin
    theta1, because the Haar measure of SO(3) in the (theta1, phi1, psi2) chart is sin theta1.
    """
    jacobian = _jacobian(lambda row: transform.inverse(row[None])[0][0], ic)
    x = transform.inverse(ic[None])[0][0].reshape(-1, 3)
    eye = torch.eye(3, dtype=ic.dtype)
    translations = eye.repeat(x.shape[0], 1)  # (3N, 3)
    rotations = torch.stack([torch.linalg.cross(eye[k].expand_as(x), x, dim=-1) for k in range(3)])
    completed = torch.cat([jacobian, translations, rotations.reshape(3, -1).T], dim=1)
    return torch.linalg.slogdet(completed)[1]


@pytest.mark.parametrize("name", sorted(SMALL_Z_MATRICES))
def test_remove_logabsdet_volume_and_keep_relation(name):
    z_matrix = SMALL_Z_MATRICES[name]
    remove = InternalCoordinates(z_matrix)
    keep = InternalCoordinates(z_matrix, rigid="keep")
    x = _random_positions(len(z_matrix), 4, seed=5)
    ic, logabsdet = remove(x)
    orientation, keep_logabsdet = keep(x)
    theta1 = orientation[:, keep.orientation_indices[0]]
    # Forward: the keep mode's log|det| without the sin(theta1) factor of the orientation.
    torch.testing.assert_close(logabsdet, keep_logabsdet + theta1.sin().log(), atol=1e-12, rtol=0)
    torch.testing.assert_close(orientation[:, keep.bond_indices], ic[:, remove.bond_indices])
    _, inverse_logabsdet = remove.inverse(ic)
    for point, value in zip(ic, inverse_logabsdet):
        torch.testing.assert_close(
            value, _rigid_completed_logabsdet(remove, point), atol=1e-9, rtol=0
        )


def test_alanine_remove_volume_check(alanine):
    _topology, positions = alanine
    remove = InternalCoordinates(alanine_dipeptide_z_matrix())
    ic, _ = remove(_perturbed(positions, 1, seed=6))
    _, logabsdet = remove.inverse(ic)
    torch.testing.assert_close(
        logabsdet[0], _rigid_completed_logabsdet(remove, ic[0]), atol=1e-8, rtol=0
    )


# --------------------------------------------------------------------------------- rigid motion
@pytest.mark.parametrize("name", sorted(SMALL_Z_MATRICES))
def test_remove_forward_is_invariant_to_rigid_motion(name):
    z_matrix = SMALL_Z_MATRICES[name]
    transform = InternalCoordinates(z_matrix)
    x = _random_positions(len(z_matrix), 32, seed=7)
    ic, logabsdet = transform(x)
    ic_moved, logabsdet_moved = transform(_rigid_motion(x, seed=8))
    torch.testing.assert_close(ic_moved, ic, atol=1e-10, rtol=0)
    torch.testing.assert_close(logabsdet_moved, logabsdet, atol=1e-10, rtol=0)
    # A reflection is not a rigid motion: it flips every torsion (chirality is kept).
    mirrored = x.reshape(32, -1, 3) * torch.tensor([1.0, 1.0, -1.0], dtype=x.dtype)
    ic_mirrored, _ = transform(mirrored.reshape(32, -1))
    torsions = transform.torsion_indices
    torch.testing.assert_close(ic_mirrored[:, torsions], -ic[:, torsions], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(SMALL_Z_MATRICES))
def test_remove_inverse_builds_the_canonical_frame(name):
    z_matrix = SMALL_Z_MATRICES[name]
    transform = InternalCoordinates(z_matrix)
    x = _random_positions(len(z_matrix), 32, seed=9)
    ic, _ = transform(x)
    canonical, _ = transform.inverse(ic)
    ic_back, _ = transform(canonical)
    torch.testing.assert_close(ic_back, ic, atol=1e-10, rtol=0)
    positions = canonical.reshape(32, -1, 3)
    root, second, third = (positions[:, row[0]] for row in z_matrix[:3])
    third_origin = positions[:, z_matrix[2][1]]
    torch.testing.assert_close(root, torch.zeros_like(root))
    torch.testing.assert_close(second[:, 1:], torch.zeros_like(second[:, 1:]))
    assert (second[:, 0] > 0).all() and third[:, 2].abs().max() < 1e-12
    assert ((third - third_origin)[:, 1] > 0).all()
    # The keep mode recovers the input from the same internal coordinates plus the rigid motion.
    keep = InternalCoordinates(z_matrix, rigid="keep")
    z, _ = keep(x)
    torch.testing.assert_close(z[:, keep.bond_indices[0] :], ic)


# ---------------------------------------------------------------------------- layout and ranges
def test_layout_attributes_and_ranges():
    z_matrix = SMALL_Z_MATRICES["third_on_root_permuted"]
    for rigid, offset in [("remove", 0), ("keep", 6)]:
        transform = InternalCoordinates(z_matrix, rigid=rigid)
        n = 7
        assert transform.num_atoms == n and transform.features_in == 3 * n
        assert transform.features_out == 3 * n - 6 + offset
        assert transform.bond_indices.tolist() == list(range(offset, offset + n - 1))
        assert transform.angle_indices.tolist() == list(range(offset + n - 1, offset + 2 * n - 3))
        assert transform.torsion_indices.tolist() == list(
            range(offset + 2 * n - 3, 3 * n - 6 + offset)
        )
        expected_circular = torch.zeros(transform.features_out, dtype=torch.bool)
        expected_circular[transform.torsion_indices] = True
        if rigid == "keep":
            assert transform.translation_indices.tolist() == [0, 1, 2]
            assert transform.orientation_indices.tolist() == [3, 4, 5]
            expected_circular[[4, 5]] = True  # phi1 and psi2 are azimuths; theta1 is polar
        assert torch.equal(transform.circular_mask, expected_circular)
        z, _ = transform(_random_positions(n, 256, seed=10))
        angles, torsions = z[:, transform.angle_indices], z[:, transform.torsion_indices]
        assert (z[:, transform.bond_indices] > 0).all()
        assert (angles > 0).all() and (angles < math.pi).all()
        assert (torsions >= -math.pi).all() and (torsions < math.pi).all()
        assert torsions.min() < -2.5 and torsions.max() > 2.5  # the whole circle is used


def test_trans_planar_torsion_is_minus_pi():
    transform = InternalCoordinates([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(
            [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0, 0.0]], dtype=dtype
        )
        z, _ = transform(x)
        torsion = z[0, transform.torsion_indices[0]]
        pi = torch.tensor(math.pi, dtype=dtype)  # pi rounded to the dtype
        assert torsion == -pi, f"{dtype}: {torsion.item()}"
        assert transform(torch.flip(x.reshape(4, 3), [0]).reshape(1, 12))[0][0, -1] == -pi


def test_feature_lookup():
    transform = InternalCoordinates(alanine_dipeptide_z_matrix())
    assert transform.torsion_feature(*ALANINE_DIPEPTIDE_PHI_ATOMS) == ALANINE_DIPEPTIDE_PHI
    assert transform.torsion_feature(14, 8, 6, 4) == ALANINE_DIPEPTIDE_PHI  # reversed order
    assert transform.torsion_feature(*ALANINE_DIPEPTIDE_PSI_ATOMS) == ALANINE_DIPEPTIDE_PSI
    assert transform.bond_feature(8, 6) == 0 and transform.angle_feature(6, 8, 14) == 21
    keep = InternalCoordinates(alanine_dipeptide_z_matrix(), rigid="keep")
    assert keep.torsion_feature(*ALANINE_DIPEPTIDE_PSI_ATOMS) == ALANINE_DIPEPTIDE_PSI + 6
    with pytest.raises(ValueError, match="torsion"):
        transform.torsion_feature(0, 1, 2, 3)


def test_dtype_device_context_and_gradients(device):
    transform = InternalCoordinates(SMALL_Z_MATRICES["third_on_second"]).to(device)
    for dtype in (torch.float32, torch.float64):
        x = _random_positions(6, 8, dtype, seed=11).to(device)
        z, logabsdet = transform(x, torch.randn(8, 3, dtype=dtype, device=device))
        assert z.dtype == logabsdet.dtype == dtype and z.device == x.device
        z_plain, _ = transform(x)
        torch.testing.assert_close(z, z_plain)  # the context is ignored
        latent = z.detach().requires_grad_(True)
        x_back, inverse_logabsdet = transform.inverse(latent)
        # A generic linear loss: |x|^2 would not see torsions about axes through the origin.
        weights = torch.linspace(-1.0, 2.0, x.shape[1], dtype=dtype, device=device)
        ((x_back * weights).sum() + inverse_logabsdet.sum()).backward()
        assert torch.isfinite(latent.grad).all() and latent.grad.abs().min() > 0


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "z_matrix, match",
    [
        ([[0, -1, -1, -1], [1, 0, -1, -1], [1, 0, 1, -1]], "exactly once"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [3, 1, 0, -1]], "exactly once"),
        ([[0, -1, -1, -1], [1, 2, -1, -1], [2, 1, 0, -1]], "not placed"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 1, -1]], "distinct"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 1]], "distinct"),
        (
            [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 4], [4, 3, 2, 1]],
            "not placed",
        ),
        ([[0, -1, -1, -1], [1, 0, 2, -1], [2, 1, 0, -1]], "-1"),
        ([[0, 1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1]], "-1"),
        ([[0, -1, -1, -1], [1, 0, -1, -1]], "at least 3"),
        ([[0, -1, -1], [1, 0, -1], [2, 1, 0]], "shape"),
    ],
)
def test_invalid_z_matrix_raises(z_matrix, match):
    with pytest.raises(ValueError, match=match):
        InternalCoordinates(z_matrix)


def test_invalid_arguments_raise():
    valid = [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1]]
    with pytest.raises(TypeError, match="integers"):
        InternalCoordinates(np.asarray(valid, dtype=float))
    with pytest.raises(ValueError, match="rigid"):
        InternalCoordinates(valid, rigid="drop")
    transform = InternalCoordinates(valid)  # 9 -> 3 features
    with pytest.raises(ValueError, match="9 features"):
        transform(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="3 features"):
        transform.inverse(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="batch"):
        transform(torch.zeros(2, 3, 3))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        transform(np.zeros((2, 9)))


# ---------------------------------------------------------------------------- alanine dipeptide
def test_alanine_z_matrix_uses_bonded_references(alanine):
    topology, _ = alanine
    z_matrix = alanine_dipeptide_z_matrix()
    assert z_matrix.shape == (22, 4) and sorted(z_matrix[:, 0].tolist()) == list(range(22))
    atoms = list(topology.atoms())
    assert len(atoms) == 22
    names = [(atom.residue.name, atom.name) for atom in atoms]
    assert names[4] == ("ACE", "C") and names[8] == ("ALA", "CA") and names[16] == ("NME", "N")
    bonds = {frozenset((a.index, b.index)) for a, b in topology.bonds()}
    for index, row in enumerate(z_matrix.tolist()):
        chain = row[: 1 + min(index, 3)]  # atom, bond_ref, angle_ref, torsion_ref
        for a, b in zip(chain[:3], chain[1:3]):
            assert frozenset((a, b)) in bonds, f"row {index} {row}: {a}-{b} is not a bond"
        if len(chain) == 4:  # proper torsion, or improper relative to a sibling on bond_ref
            _, bond_ref, angle_ref, torsion_ref = chain
            assert {frozenset((angle_ref, torsion_ref)), frozenset((bond_ref, torsion_ref))} & bonds
    InternalCoordinates(z_matrix)  # valid


def _rotate_about_bond(x, axis_atoms, moving, angle):
    """Rotate the atoms ``moving`` rigidly about the bond ``axis_atoms`` by ``angle`` (Rodrigues)."""
    positions = x.reshape(-1, 22, 3).clone()
    origin = positions[:, axis_atoms[0]]
    k = positions[:, axis_atoms[1]] - origin
    k = (k / k.norm(dim=-1, keepdim=True))[:, None]
    v = positions[:, moving] - origin[:, None]
    rotated = (
        v * math.cos(angle)
        + torch.linalg.cross(k.expand_as(v), v, dim=-1) * math.sin(angle)
        + k * (k * v).sum(-1, keepdim=True) * (1 - math.cos(angle))
    )
    positions[:, moving] = origin[:, None] + rotated
    return positions.reshape(x.shape)


@pytest.mark.parametrize(
    "axis, moving, feature_row",
    [
        ((6, 8), [0, 1, 2, 3, 4, 5, 7], 3),  # phi: ACE side about N-CA
        ((8, 14), [15, 16, 17, 18, 19, 20, 21], 4),  # psi: NME side about CA-C
        ((10, 8), [11, 12, 13], 13),  # the CB methyl rotor
        ((1, 4), [0, 2, 3], 8),  # the ACE methyl rotor
        ((18, 16), [19, 20, 21], 19),  # the NME methyl rotor
    ],
)
def test_alanine_rotamer_moves_one_torsion(alanine, axis, moving, feature_row):
    # A rigid rotation about a rotatable bond (phi, psi, a methyl rotor) changes exactly one
    # feature: the siblings' torsions are relative to the first atom on their bond, so they do
    # not jump together with the rotor (the flow then only has to learn one multimodal angle).
    _, positions = alanine
    transform = InternalCoordinates(alanine_dipeptide_z_matrix())
    before, _ = transform(positions)
    after, _ = transform(_rotate_about_bond(positions, axis, moving, 2.0))
    change = np.angle(np.exp(1j * (after - before).numpy()[0]))
    expected = transform.torsion_indices[feature_row - 3].item()
    assert abs(abs(change[expected]) - 2.0) < 1e-9
    change[expected] = 0.0
    assert np.abs(change).max() < 1e-9


def test_alanine_internal_coordinates_agree_with_mdtraj(alanine):
    md = pytest.importorskip("mdtraj")
    topology, positions = alanine
    x = torch.cat([positions, _perturbed(positions, 15, scale=0.02, seed=12)])
    x = x.float().double()  # exactly the float32 values mdtraj sees
    traj = md.Trajectory(x.reshape(-1, 22, 3).numpy(), md.Topology.from_openmm(topology))
    z_matrix = alanine_dipeptide_z_matrix()
    transform = InternalCoordinates(z_matrix)
    ic, _ = transform(x)

    backbone = md.compute_dihedrals(
        traj, [ALANINE_DIPEPTIDE_PHI_ATOMS, ALANINE_DIPEPTIDE_PSI_ATOMS]
    )
    phi_psi = ic[:, [ALANINE_DIPEPTIDE_PHI, ALANINE_DIPEPTIDE_PSI]].numpy()
    difference = np.angle(np.exp(1j * (phi_psi - backbone)))  # compare on the circle
    assert np.abs(difference).max() < 1e-4
    assert np.ptp(phi_psi[:, 0]) > 0.05  # the perturbations moved phi

    torsions = md.compute_dihedrals(traj, z_matrix[3:])
    difference = np.angle(np.exp(1j * (ic[:, transform.torsion_indices].numpy() - torsions)))
    assert np.abs(difference).max() < 1e-4
    angles = md.compute_angles(traj, z_matrix[2:, :3])
    np.testing.assert_allclose(ic[:, transform.angle_indices].numpy(), angles, atol=1e-4)
    distances = md.compute_distances(traj, z_matrix[1:, :2])
    np.testing.assert_allclose(ic[:, transform.bond_indices].numpy(), distances, atol=1e-5)


# --------------------------------------------------------------------- internal_coordinate_flow
def _chain_data(torsion_centre, n=256, seed=0):
    """Four-atom chains with bonds ~1, angles ~pi/2 and a torsion ~``torsion_centre`` (sd 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    ic = torch.empty(n, 6, dtype=torch.float64)
    ic[:, :3] = 1.0 + 0.05 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    ic[:, 3:5] = math.pi / 2 + 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    ic[:, 5] = wrap_angle(torsion_centre + 0.1 * torch.randn(n, generator=generator).double())
    return ic


def _centring(flow):
    return list(next(iter(flow.transform)))[1]  # preprocess = [coordinates, centring, standardise]


def test_internal_coordinate_flow_centres_concentrated_torsions():
    z_matrix = [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]]
    transform = InternalCoordinates(z_matrix)
    data, _ = transform.inverse(_chain_data(math.pi))  # the peak straddles the cut at +-pi
    flow = internal_coordinate_flow(z_matrix, data.float(), transforms=2, hidden_features=(8,))
    shift = _centring(flow)
    assert isinstance(shift, CircularShift)
    assert abs(wrap_angle(shift.shift[5].double() - math.pi).item()) < 0.05
    assert shift.mask.tolist() == [False] * 5 + [True]
    # The preprocessed torsion is one standardised bump, continuous across the cut at +-pi.
    preprocess = next(iter(flow.transform))
    standardised = preprocess(data.float())[0][:, 5]
    assert abs(standardised.mean().item()) < 1e-3 and abs(standardised.std().item() - 1) < 1e-3
    probe = _chain_data(math.pi, n=2, seed=1)
    probe[:, :5] = probe[:1, :5]
    probe[:, 5] = torch.tensor([math.pi - 1e-3, -math.pi + 1e-3])
    log_q = flow.log_prob(transform.inverse(probe)[0].float())
    assert abs((log_q[0] - log_q[1]).item()) < 0.01
    # Samples keep their own density (no visible mass beyond +-pi of the mean).
    samples, log_q = flow.sample_and_log_prob(2000, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(flow.log_prob(samples), log_q, atol=1e-3)

    spread = internal_coordinate_flow(z_matrix, data.float(), transforms=2, concentrated=None)
    assert not bool(_centring(spread).mask.any())
    with pytest.raises(ValueError, match="concentrated"):
        internal_coordinate_flow(z_matrix, data, concentrated=1.5)


def test_alanine_flow_keeps_only_rotatable_torsions_circular(alanine):
    # Small perturbations of one structure make every torsion a narrow peak; spreading phi, psi
    # and the methyl rotors over the circle leaves exactly the other torsions to be centred.
    _, positions = alanine
    transform = InternalCoordinates(alanine_dipeptide_z_matrix())
    ic, _ = transform(_perturbed(positions, 512, scale=0.005, seed=4))
    spread_rows = [3, 4, 8, 13, 19]  # phi, psi and the three methyl rotors
    spread = transform.torsion_indices[[row - 3 for row in spread_rows]]
    generator = torch.Generator().manual_seed(5)
    ic[:, spread] = (torch.rand(len(ic), len(spread), generator=generator).double() - 0.5) * 6.28
    flow = internal_coordinate_flow(transform, transform.inverse(ic)[0].float(), transforms=1)
    centred = _centring(flow).mask
    expected = torch.zeros(60, dtype=torch.bool)
    expected[transform.torsion_indices] = True
    expected[spread] = False
    assert torch.equal(centred, expected)


def test_flows_never_come_from_energies_and_the_old_paths_still_work():
    """internal_coordinate_flow builds a flow, so it lives in normflows_sci.flows and the energies
    package imports no flow module; the former import paths still work, with a warning naming
    the new one."""
    import ast
    import pathlib

    import normflows_sci.energies as energies
    from normflows_sci.energies import molecular
    from normflows_sci.energies.molecular import generator

    for path in pathlib.Path(energies.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                at_import_time = node.col_offset == 0
                assert not (at_import_time and node.module.startswith("normflows_sci.flows")), path
    for module in (molecular, generator):
        with pytest.warns(DeprecationWarning, match="import it from normflows_sci.flows"):
            assert module.internal_coordinate_flow is internal_coordinate_flow
    assert molecular.InternalCoordinates is InternalCoordinates
    with pytest.raises(AttributeError):
        molecular.no_such_name  # noqa: B018
