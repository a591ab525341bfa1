"""Continuous flows for particle systems that respect their symmetries.

:func:`particle_flow` is a :class:`~normflows_sci.flows.ContinuousFlow` on the zero-centre-of-mass
space :class:`~normflows_sci.manifolds.MeanFree` with an E(n)-equivariant graph network velocity
(:class:`~normflows_sci.nn.EGNNVelocity`) and the mean-free standard normal base: its density is
invariant under rotations, reflections and translations of the configuration and permutations of
the identical particles (Köhler, Klein & Noé 2020; Satorras, Hoogeboom & Welling 2021, E(n)
equivariant normalizing flows). Train it by flow matching
(:func:`~normflows_sci.training.fit_flow_matching`, with ``ot="equivariant"`` for equivariant OT
pairs as in Klein, Krämer & Noé 2023), by maximum likelihood or by reverse KL on an energy
(:func:`~normflows_sci.training.fit_boltzmann`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normflows_sci.distributions import Distribution
from normflows_sci.flows.cnf import CNF, ContinuousFlow
from normflows_sci.manifolds import MeanFree
from normflows_sci.nn import EGNNVelocity

__all__ = ["particle_flow"]


def particle_flow(
    n_particles: int,
    spatial_dim: int,
    hidden_features: int = 64,
    layers: int = 3,
    *,
    context_features: int = 0,
    activation: Callable[[], nn.Module] = nn.SiLU,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    seed: int | None = None,
    **solver,
) -> ContinuousFlow:
    """An E(n)- and permutation-equivariant continuous flow of ``n_particles`` identical
    particles in ``spatial_dim`` dimensions.

    Points are flat configurations ``x: (batch, n_particles * spatial_dim)`` (the layout of
    :mod:`normflows_sci.energies.particles`) on the zero-centre-of-mass subspace; a point off it is
    treated as its projection (the centre of mass is ignored, as the energies do). Densities are
    with respect to the ``(n - 1) d``-dimensional volume of the subspace, so ``log Z`` estimated
    with this flow (:func:`~normflows_sci.samplers.importance_sample`) is too; see
    :class:`~normflows_sci.manifolds.MeanFree`.

    The divergence is exact by default: the Riemannian divergence on the subspace, ``(n - 1) d``
    forward-mode tangents per field evaluation
    (:meth:`~normflows_sci.nn.EGNNVelocity.value_and_divergence`). ``divergence="hutchinson"``
    carries one probe tangent instead: ``log_prob`` stays unbiased, importance weights, the ESS
    and ``log Z`` do not; to train with it and evaluate exactly, pass it to
    :func:`~normflows_sci.training.fit_boltzmann` instead.

    Cost: evaluate densities under ``torch.no_grad()`` unless gradients are needed. With
    gradients every field evaluation is checkpointed (tangents recomputed in the backward pass):
    memory grows with batch x field evaluations, time with the tangents carried.

    Args:
        n_particles: number of identical particles (>= 2).
        spatial_dim: dimension of space (>= 1).
        hidden_features: width of the EGNN features and messages.
        layers: EGNN message-passing layers.
        context_features: width of a global invariant context (after ``embedding``), 0 for none.
        activation: activation of the EGNN (smooth, default SiLU).
        base: latent distribution at ``t = 0`` (default
            :class:`~normflows_sci.manifolds.MeanFreeNormal`); it should be invariant too.
        embedding: network applied to the context first.
        seed: seeds the network initialisation (reproducible models).
        **solver: the :class:`~normflows_sci.flows.ODETransform` settings of
            :func:`~normflows_sci.flows.CNF` (``solver``, ``rtol``, ``atol``, ``steps``,
            ``divergence``, ``noise``, ``max_steps``).

    Example:
        >>> flow = particle_flow(3, 2, hidden_features=8, layers=2, solver="rk4", steps=4, seed=0)
        >>> x = flow.sample(5, generator=torch.Generator().manual_seed(0))
        >>> rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> rotated = (x.unflatten(1, (3, 2)) @ rotation.T).flatten(1)
        >>> bool(torch.allclose(flow.log_prob(rotated), flow.log_prob(x), atol=1e-4))
        True
    """
    space = MeanFree(n_particles, spatial_dim)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        velocity = EGNNVelocity(
            space.n_particles,
            space.spatial_dim,
            hidden_features,
            layers,
            context_features=context_features,
            activation=activation,
        )
    return CNF(
        context_features=context_features,
        base=base,
        embedding=embedding,
        velocity=velocity,
        manifold=space,
        **solver,
    )
