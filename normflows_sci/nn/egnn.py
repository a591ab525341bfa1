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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from normflows_sci.checks import check_context, check_int
from normflows_sci.nn.networks import bounded_inputs

__all__ = ["EGNNVelocity", "mean_free_basis"]

# Tangents per batch of the exact divergence: about this many edge-feature elements at once.
_TANGENT_ELEMENTS = 1 << 21


def _safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt`` with a zero (not infinite) gradient at 0 (the diagonal pairs ``i = i``)."""
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


def mean_free_basis(n_particles: int, spatial_dim: int) -> Tensor:
    """The ``(n d, (n - 1) d)`` float64 orthonormal basis of the zero-centre-of-mass subspace of
    ``n`` particles in ``d`` dimensions (flat coordinates, particle-major): Helmert's basis of the
    sum-zero vectors of ``R^n`` (column ``k - 1``: ``k`` ones, then ``-k``, normalised) times
    ``I_d``.

    Example:
        >>> basis = mean_free_basis(3, 2)
        >>> tuple(basis.shape), torch.allclose(basis.T @ basis, torch.eye(4, dtype=torch.float64))
        ((6, 4), True)
    """
    helmert = torch.zeros(n_particles, n_particles - 1, dtype=torch.float64)
    for k in range(1, n_particles):
        norm = math.sqrt(k * (k + 1))
        helmert[:k, k - 1] = 1.0 / norm
        helmert[k, k - 1] = -k / norm
    return torch.kron(helmert, torch.eye(spatial_dim, dtype=torch.float64))


def _silu(activation: nn.SiLU, z: Tensor) -> tuple[Tensor, Tensor]:
    sigmoid = torch.sigmoid(z)
    return F.silu(z), sigmoid * (1.0 + z * (1.0 - sigmoid))


def _tanh(activation: nn.Tanh, z: Tensor) -> tuple[Tensor, Tensor]:
    value = torch.tanh(z)
    return value, 1.0 - value.square()


def _sigmoid(activation: nn.Sigmoid, z: Tensor) -> tuple[Tensor, Tensor]:
    value = torch.sigmoid(z)
    return value, value * (1.0 - value)


def _softplus(activation: nn.Softplus, z: Tensor) -> tuple[Tensor, Tensor]:
    # Above the threshold softplus is the identity (slope 1), as torch computes it.
    scaled = z * activation.beta
    slope = torch.where(scaled > activation.threshold, 1.0, torch.sigmoid(scaled))
    return activation(z), slope


def _identity(activation: nn.Identity, z: Tensor) -> tuple[Tensor, Tensor]:
    return z, torch.ones_like(z)


# Activations with their slopes in closed form (elementwise: a tangent passes through as
# ``slope * tangent``); any other activation makes the divergence fall back to autograd.
_SLOPES = {
    nn.SiLU: _silu,
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
    nn.Softplus: _softplus,
    nn.Identity: _identity,
}


def _with_slope(activation: nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(activation(z), activation'(z))`` of an activation of :data:`_SLOPES`."""
    return _SLOPES[type(activation)](activation, z)


def _linear(tangent: Tensor, layer: nn.Linear) -> Tensor:
    """The tangent of a linear layer (its weight only; the bias is constant)."""
    return F.linear(tangent, layer.weight)


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

    def primal(self, pos: Tensor, h: Tensor, globals_: Tensor, mask: Tensor):
        """:meth:`forward` (same operations, same values) keeping what :meth:`tangent` needs:
        distances, the activations' slopes and the gradient of each edge's coordinate weight
        with respect to its pre-activation. Returns ``(step, h, cache)``."""
        n = pos.shape[1]
        diff = pos[:, :, None, :] - pos[:, None, :, :]
        squared = diff.square().sum(-1, keepdim=True)
        scalars = torch.cat(
            [
                torch.log1p(squared),
                globals_[:, None, None, :].expand(*squared.shape[:3], globals_.shape[-1]),
            ],
            dim=-1,
        )
        pre = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None] + self.edge_scalars(scalars)
        hidden, slope1 = _with_slope(self.edge_out[0], pre)
        messages, slope2 = _with_slope(self.edge_out[2], self.edge_out[1](hidden))
        messages, slope2 = messages * mask, slope2 * mask
        coordinate, slope3 = _with_slope(self.coordinate[1], self.coordinate[0](messages))
        weights = self.coordinate[2](coordinate) * mask
        radius = _safe_sqrt(squared)
        unit = diff / (radius + 1.0)
        step = (unit * weights).sum(2) / (n - 1)
        # d weight / d pre-activation of every edge (zero on the masked diagonal, as slope2 is).
        gradient = slope3 * self.coordinate[2].weight[0]
        gradient = slope1 * (
            (slope2 * (gradient @ self.coordinate[0].weight)) @ self.edge_out[1].weight
        )
        along_log = self.edge_scalars.weight[:, 0]
        cache = dict(
            diff=diff,
            squared=squared,
            radius=radius,
            unit=unit,
            weights=weights,
            slopes=(slope1, slope2),
            gradient=gradient,
            gradient_t=gradient.transpose(1, 2).contiguous(),
            gradient_along_log=gradient @ along_log,
            node_slope=None,
        )
        if self.node is not None:
            # Messages' derivative along the log-distance alone (the first layer's tangents).
            cache["messages_along_log"] = slope2 * _linear(slope1 * along_log, self.edge_out[1])
            aggregated = messages.sum(2) / (n - 1)
            node_in = self.node[0](torch.cat([h, aggregated], dim=-1))
            node_hidden, cache["node_slope"] = _with_slope(self.node[1], node_in)
            h = h + self.node[2](node_hidden)
        return step, h, cache

    def _weight_tangents(self, cache: dict, dlog: Tensor, dh: Tensor | None):
        """Tangents of the aggregated messages ``(*T, batch, n, H)`` (their sum over the
        neighbours; ``None`` when no feature update reads them) and of the coordinate weights
        ``(*T, batch, n, n, 1)``, from the tangent ``dlog`` of each
        edge's ``log(1 + d^2)`` and ``dh`` of the features.

        A weight is a scalar function of its edge's pre-activation, so its tangent is the dot
        product of that pre-activation's tangent with the cached gradient (no coordinate network
        per tangent). Without feature tangents (the first layer: the features do not depend on
        the positions) a pre-activation moves along a fixed vector times ``dlog``, so both
        tangents are a direction-free tensor times a scalar per edge.
        """
        dlog = dlog[..., 0]
        if dh is None:
            dweights = cache["gradient_along_log"] * dlog
            if self.node is None:
                return None, dweights[..., None]
            # sum_l along_kl dlog_kl as (batch, n) matrix products over the neighbours.
            daggregated = dlog.permute(1, 2, 0, 3) @ cache["messages_along_log"]
            return daggregated.permute(2, 0, 1, 3), dweights[..., None]
        slope1, slope2 = cache["slopes"]
        source, target = _linear(dh, self.edge_i), _linear(dh, self.edge_j)
        # The dot products with the gradient term by term, as (batch, n) matrix products with
        # the tangents in the columns (no edge tensor per tangent for the weights).
        dweights = (
            (cache["gradient"] @ source.permute(1, 2, 3, 0)).permute(3, 0, 1, 2)
            + (cache["gradient_t"] @ target.permute(1, 2, 3, 0)).permute(3, 0, 2, 1)
            + cache["gradient_along_log"] * dlog
        )[..., None]
        if self.node is None:
            return None, dweights
        dpre = torch.addcmul(
            source[..., :, None, :] + target[..., None, :, :],
            dlog[..., None],
            self.edge_scalars.weight[:, 0],
        )
        return (slope2 * _linear(slope1 * dpre, self.edge_out[1])).sum(-2), dweights

    def tangent(self, cache: dict, dpos: Tensor, dh: Tensor | None):
        """The forward-mode derivative of the layer at the point of :meth:`primal` along
        tangents ``dpos: (*T, batch, n, d)`` of the positions and ``dh: (*T, batch, n, H)`` of
        the features (``None``: zero). Returns ``(dstep, dh)`` (``dh`` unchanged by the last
        layer)."""
        n = dpos.shape[-2]
        diff, radius = cache["diff"], cache["radius"]
        ddiff = dpos[..., :, None, :] - dpos[..., None, :, :]
        dsquared = 2.0 * (diff * ddiff).sum(-1, keepdim=True)
        dmessages, dweights = self._weight_tangents(cache, dsquared / (1.0 + cache["squared"]), dh)
        # d sqrt(s) = ds / (2 sqrt(s)), zero where the safe square root is (coincident points).
        positive = radius > 0
        safe = torch.where(positive, radius, torch.ones_like(radius))
        dradius = torch.where(positive, dsquared / (2.0 * safe), torch.zeros_like(dsquared))
        dunit = ddiff / (radius + 1.0) - diff * dradius / (radius + 1.0).square()
        dstep = (dunit * cache["weights"] + cache["unit"] * dweights).sum(-2) / (n - 1)
        if self.node is None:
            return dstep, dh
        daggregated = dmessages / (n - 1)
        dfeatures = torch.zeros_like(daggregated) if dh is None else dh
        dhidden = _linear(torch.cat([dfeatures, daggregated], -1), self.node[0])
        return dstep, dfeatures + _linear(cache["node_slope"] * dhidden, self.node[2])


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
        self.width = width
        # The divergence's tangent directions, kept in float64 (cast per use): a module buffer
        # would lose digits through .float().double().
        self._tangent_basis = mean_free_basis(self.n_particles, self.spatial_dim)
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

    def _inputs(self, x: Tensor, t: Tensor, context: Tensor | None):
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
        return pos, globals_, h, mask

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        pos, globals_, h, mask = self._inputs(x, t, context)
        velocity = torch.zeros_like(pos)
        for layer in self.layers:
            step, h = layer(pos, h, globals_, mask)
            pos, velocity = pos + step, velocity + step
        return (velocity - velocity.mean(1, keepdim=True)).flatten(1)

    def _divergence_supported(self, x: Tensor, manifold) -> bool:
        # The mean-free subspace of the same size (MeanFree.particle_shape), or R^(n d).
        shape = getattr(manifold, "particle_shape", None)
        if manifold is not None and shape != (self.n_particles, self.spatial_dim):
            return False
        activations = [self.embed[1]]
        for layer in self.layers:
            activations += [layer.edge_out[0], layer.edge_out[2], layer.coordinate[1]]
            activations += [] if layer.node is None else [layer.node[1]]
        if any(type(module) not in _SLOPES for module in activations):
            return False
        # A clamped coordinate breaks translation invariance (the identity the trace relies on).
        return torch.equal(bounded_inputs(x), x)

    def value_and_divergence(
        self, x: Tensor, t: Tensor, context: Tensor | None = None, manifold=None
    ) -> tuple[Tensor, Tensor] | None:
        """The velocity and its exact divergence in one pass (the hook of
        :class:`~normflows_sci.flows.ODETransform`).

        The divergence is ``sum_k b_k^T J b_k`` over an orthonormal basis ``b_k`` of the
        zero-centre-of-mass subspace, with ``J`` the Jacobian of the uncentred displacement
        ``u``, by forward-mode derivatives along all ``(n - 1) d`` basis vectors (a few at a
        time) through the layers: the exact Riemannian divergence on the subspace (``manifold``
        a :class:`~normflows_sci.manifolds.MeanFree` of the same size), as the centred field has
        Jacobian ``P J`` and ``P b_k = b_k`` (``P`` the projection removing the centre of mass).
        In ``R^(n d)`` (``manifold=None``) it is the ambient trace too: ``u`` only sees
        differences of positions, so ``J`` vanishes on translations, ``J = J P`` and ``tr(P J) =
        tr(P J P)``.

        Cost: the layers' coordinate weights need one product with a cached gradient per
        tangent; the first layer's features do not depend on the positions and the last
        layer's feed nothing, so only the layers in between propagate full message tangents
        (``(n - 1) d`` times the work of their message networks).

        With gradients enabled (maximum likelihood, reverse KL) each call is checkpointed: only
        its inputs are kept and the tangents are recomputed in the backward pass, so memory
        does not grow with the tangents of every solver stage (the backward pass costs one more
        evaluation per stage).

        Returns:
            ``(v: (batch, n d), div: (batch,))``, ``v`` equal to :meth:`forward`; ``None`` (use
            autograd instead) for another manifold, a non-elementwise activation, or a
            coordinate beyond :func:`~normflows_sci.nn.bounded_inputs`'s clamp.
        """
        if not self._divergence_supported(x, manifold):
            return None
        if torch.is_grad_enabled():
            # Keep only the inputs of each evaluation and recompute its tangents in the backward
            # pass: the tangents' graphs of every solver stage would not fit in memory.
            return checkpoint(self._value_and_divergence, x, t, context, use_reentrant=False)
        return self._value_and_divergence(x, t, context)

    def value_and_probed_divergence(
        self, x: Tensor, t: Tensor, context: Tensor | None, manifold, probe: Tensor
    ) -> tuple[Tensor, Tensor] | None:
        """The velocity and Hutchinson's estimate ``probe^T J probe`` of its divergence in one
        pass (the hook of :class:`~normflows_sci.flows.ODETransform` for
        ``divergence="hutchinson"``).

        ``probe: (batch, n d)`` is one direction per row, in the zero-centre-of-mass subspace on
        a :class:`~normflows_sci.manifolds.MeanFree` manifold (``B r`` with ``E[r r^T] = I``,
        so the expectation is the exact divergence of :meth:`value_and_divergence`). It is
        carried through the layers as a single forward-mode tangent, where the exact divergence
        carries ``(n - 1) d`` of them; ``probe^T P J probe`` is used (``P`` removes the centre of
        mass), the Jacobian of the centred field, so a probe off the subspace (``R^(n d)``,
        ``manifold=None``) gives an unbiased estimate of the ambient trace too. Checkpointed
        with gradients enabled, like :meth:`value_and_divergence`.

        Returns:
            ``(v: (batch, n d), estimate: (batch,))``, or ``None`` in the cases where
            :meth:`value_and_divergence` returns ``None``.
        """
        if probe.shape != x.shape:
            raise ValueError(
                f"probe must have the shape of x, {tuple(x.shape)}, got {tuple(probe.shape)}"
            )
        if not self._divergence_supported(x, manifold):
            return None
        if torch.is_grad_enabled():
            return checkpoint(self._value_and_divergence, x, t, context, probe, use_reentrant=False)
        return self._value_and_divergence(x, t, context, probe)

    def _value_and_divergence(
        self, x: Tensor, t: Tensor, context: Tensor | None, probe: Tensor | None = None
    ):
        pos, globals_, h, mask = self._inputs(x, t, context)
        n, d, batch = self.n_particles, self.spatial_dim, x.shape[0]
        velocity = torch.zeros_like(pos)
        caches = []
        for layer in self.layers:
            step, h, cache = layer.primal(pos, h, globals_, mask)
            pos, velocity = pos + step, velocity + step
            caches.append(cache)
        value = (velocity - velocity.mean(1, keepdim=True)).flatten(1)
        if probe is not None:  # one tangent per row: the probe itself
            direction = probe.to(pos).reshape(1, batch, n, d)
            displacement = self._tangent(caches, direction)
            centred = displacement - displacement.mean(-2, keepdim=True)
            return value, (centred * direction).sum((0, 2, 3))
        # Tangents along an orthonormal basis of the zero-centre-of-mass subspace, a few at a
        # time: the (tangents, batch, n, n, H) edge tensors stay small.
        basis = self._tangent_basis.to(pos).T  # ((n - 1) d, n d)
        chunk = max(1, _TANGENT_ELEMENTS // (max(batch, 1) * n * n * self.width))
        trace = pos.new_zeros(batch)
        for rows in basis.split(chunk):
            displacement = self._tangent(caches, rows.reshape(-1, 1, n, d).expand(-1, batch, n, d))
            trace = trace + (displacement.flatten(2) * rows[:, None, :]).sum((0, 2))
        return value, trace

    def _tangent(self, caches: list, dpos: Tensor) -> Tensor:
        """The tangent ``(*T, batch, n, d)`` of the uncentred displacement along position
        tangents ``dpos`` (the forward pass's :meth:`_EquivariantLayer.primal` caches)."""
        dh, displacement = None, torch.zeros_like(dpos)
        for layer, cache in zip(self.layers, caches):
            dstep, dh = layer.tangent(cache, dpos, dh)
            dpos, displacement = dpos + dstep, displacement + dstep
        return displacement
