"""An E(n)- and permutation-equivariant velocity field for particle systems (EGNN).

Satorras, Hoogeboom & Welling (2021), "E(n) equivariant graph neural networks": every particle
carries invariant features ``h_i`` (here initialised from the time, and the context, identically
for all particles, since they are indistinguishable); each layer computes messages on all pairs
from ``(h_i, h_j, |x_i - x_j|^2, t)``, moves the particles along the difference vectors weighted
by a network of the messages, and updates the features from the aggregated messages:

    m_ij  = phi_e(h_i, h_j, log(1 + d_ij^2), t)
    x_i  += 1/(n - 1) sum_{j != i} (x_i - x_j) / (d_ij + 1) phi_x(m_ij)
    h_i  += phi_h(h_i, 1/(n - 1) sum_{j != i} m_ij)

The velocity is the total displacement with its centre of mass removed. It rotates and reflects
with the particles (every vector is a combination of difference vectors with invariant weights),
ignores translations (only differences enter) and permutes with them (sums over all pairs); the
difference vectors are divided by ``d_ij + 1`` so close particles give bounded, smooth updates, and
the squared distances enter as ``log(1 + d^2)`` so far-apart ones do not overflow the layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_context, check_int
from normflows_sci.nn.networks import bounded_inputs

__all__ = ["EGNNVelocity"]


def _safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt`` with a zero (not infinite) gradient at 0 (the diagonal pairs ``i = i``)."""
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


class _EquivariantLayer(nn.Module):
    """One EGNN layer on ``(batch, n, d)`` positions and ``(batch, n, H)`` features."""

    def __init__(self, width: int, globals_width: int, activation, update_features: bool):
        super().__init__()
        # The first edge layer split by input (h_i, h_j, edge scalars) so the (batch, n, n, 2H)
        # concatenation is never materialised.
        self.edge_i = nn.Linear(width, width)
        self.edge_j = nn.Linear(width, width, bias=False)
        self.edge_scalars = nn.Linear(1 + globals_width, width, bias=False)
        self.edge_out = nn.Sequential(activation(), nn.Linear(width, width), activation())
        self.coordinate = nn.Sequential(nn.Linear(width, width), activation(), nn.Linear(width, 1))
        with torch.no_grad():  # start near the zero field (stable early training)
            self.coordinate[-1].weight.mul_(1e-2)
            self.coordinate[-1].bias.zero_()
        self.node = None
        if update_features:  # the last layer's features would feed nothing
            self.node = nn.Sequential(
                nn.Linear(2 * width, width), activation(), nn.Linear(width, width)
            )

    def forward(self, pos: Tensor, h: Tensor, globals_: Tensor, mask: Tensor):
        n = pos.shape[1]
        diff = pos[:, :, None, :] - pos[:, None, :, :]  # (batch, n, n, d)
        squared = diff.square().sum(-1, keepdim=True)
        scalars = torch.cat(
            [
                torch.log1p(squared),
                globals_[:, None, None, :].expand(*squared.shape[:3], globals_.shape[-1]),
            ],
            dim=-1,
        )
        pre = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None] + self.edge_scalars(scalars)
        messages = self.edge_out(pre) * mask  # no self-messages
        weights = self.coordinate(messages) * mask
        step = (diff / (_safe_sqrt(squared) + 1.0) * weights).sum(2) / (n - 1)
        if self.node is not None:
            aggregated = messages.sum(2) / (n - 1)
            h = h + self.node(torch.cat([h, aggregated], dim=-1))
        return step, h


class EGNNVelocity(nn.Module):
    """E(n)- and permutation-equivariant velocity ``v(x, t[, c])`` of ``n`` particles in ``d``
    dimensions (an EGNN; see the module docstring), for
    :func:`~normflows_sci.flows.particle_flow` or any :class:`~normflows_sci.flows.ODETransform`.

    Args:
        n_particles: number of identical particles (>= 2).
        spatial_dim: dimension of space (>= 1).
        hidden_features: width ``H`` of the particle features and messages.
        layers: message-passing layers (>= 1).
        context_features: width of a global (invariant) context, 0 for none.
        activation: module class; smooth (default SiLU) so the ODE is smooth.
        frequencies: Fourier frequencies of the time embedding (``t``, ``sin``, ``cos`` of
            ``pi k t`` for ``k = 1..frequencies``).

    Shapes:
        ``forward(x: (batch, n d), t: (batch, 1), context: (batch, C) | None) -> (batch, n d)``,
        flat particle-major coordinates; the output has zero centre of mass. All pairs are
        computed at once: memory ``O(batch n^2 H)``.

    Example:
        >>> field = EGNNVelocity(3, 2, hidden_features=8, layers=2)
        >>> x = torch.randn(4, 6)
        >>> v = field(x, torch.full((4, 1), 0.5))
        >>> v.shape, bool(v.unflatten(1, (3, 2)).sum(1).abs().max() < 1e-5)
        (torch.Size([4, 6]), True)
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        hidden_features: int = 64,
        layers: int = 3,
        *,
        context_features: int = 0,
        activation: Callable[[], nn.Module] = nn.SiLU,
        frequencies: int = 4,
    ):
        super().__init__()
        self.n_particles = check_int("n_particles", n_particles, minimum=2)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, minimum=1)
        width = check_int("hidden_features", hidden_features)
        count = check_int("layers", layers)
        self.context_features = check_int("context_features", context_features, minimum=0)
        self.frequencies = check_int("frequencies", frequencies, minimum=0)
        self.features = self.n_particles * self.spatial_dim
        globals_width = 1 + 2 * self.frequencies + self.context_features
        self.embed = nn.Sequential(nn.Linear(globals_width, width), activation())
        self.layers = nn.ModuleList(
            _EquivariantLayer(width, globals_width, activation, update_features=i < count - 1)
            for i in range(count)
        )

    def _globals(self, t: Tensor, context: Tensor | None, like: Tensor) -> Tensor:
        t = t.to(like.dtype).reshape(-1, 1).expand(like.shape[0], 1)
        parts = [t]
        if self.frequencies:
            k = torch.arange(1, self.frequencies + 1, dtype=like.dtype, device=like.device)
            parts += [torch.sin(math.pi * k * t), torch.cos(math.pi * k * t)]
        if self.context_features:
            parts.append(context.flatten(1).to(like.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        check_context(context, self.context_features, flatten=True)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(
                f"x must have shape (batch, {self.features}) for {self.n_particles} particles in "
                f"{self.spatial_dim}-D, got {tuple(x.shape)}"
            )
        # Bounded coordinates: far beyond any data scale the field is constant (finite ODE steps).
        pos = bounded_inputs(x).unflatten(1, (self.n_particles, self.spatial_dim))
        globals_ = self._globals(t, context, x)
        h = self.embed(globals_)[:, None, :].expand(-1, self.n_particles, -1)
        n = self.n_particles
        mask = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)[None, :, :, None]
        velocity = torch.zeros_like(pos)
        for layer in self.layers:
            step, h = layer(pos, h, globals_, mask)
            pos, velocity = pos + step, velocity + step
        return (velocity - velocity.mean(1, keepdim=True)).flatten(1)
