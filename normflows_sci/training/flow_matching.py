"""Conditional flow matching and minibatch optimal-transport flow matching for continuous flows.

Time convention: noise ``x0 ~ p0`` (the CNF's base) at ``t = 0``, data ``x1`` at ``t = 1``. With
``t ~ U(0, 1)`` and the linear interpolant ``x_t = t x1 + (1 - t) x0 (+ sigma eps)`` the
regression target of the velocity is ``u_t = x1 - x0`` (Lipman et al. 2022, conditional flow
matching; Liu et al. 2022, rectified flow):

    L(theta) = E_{t, x0, x1} || v_theta(x_t, t) - (x1 - x0) ||^2.

Minibatch OT flow matching (Tong et al. 2023; Pooladian et al. 2023) pairs each minibatch of noise
with the data minibatch by the exact optimal assignment under the squared Euclidean cost
(``scipy.optimize.linear_sum_assignment``), which straightens the learned paths.

Riemannian flow matching (Chen & Lipman 2023) for a CNF built on a manifold (``CNF(...,
manifold=...)``) replaces the straight line by the geodesic interpolant ``x_t = exp_{x0}(t
log_{x0}(x1))`` with target ``u_t = d x_t / dt``:

* torus (angles): ``x_t = wrap(x0 + t delta)``, ``u_t = delta = wrap(x1 - x0)``;
* sphere (unit vectors, ``theta = arccos <x0, x1>``): ``x_t = (sin((1-t) theta) x0 +
  sin(t theta) x1) / sin theta`` (slerp), ``u_t = theta (cos(t theta) x1 - cos((1-t) theta) x0)
  / sin theta``;

and OT pairing uses the squared geodesic distance.

Equivariant OT flow matching (Klein, Krämer & Noé 2023) for particle systems (a flow on
:class:`~normflows_sci.manifolds.MeanFree`, e.g. :func:`~normflows_sci.flows.particle_flow`):
every noise sample is first aligned to every data sample of the minibatch over permutations of the
identical particles and rotations (:meth:`~normflows_sci.manifolds.MeanFree.align`), the batch
assignment then minimises the aligned squared distances and each data point is paired with its
aligned noise sample (:class:`EquivariantOT`). The pairing is a value: ``ot=False`` (independent
pairs), ``ot=True`` (plain minibatch OT), ``ot="equivariant"`` (an :class:`EquivariantOT` of the
flow's particle space) or any callable ``pairing(x0, x1, manifold) -> paired x0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from normflows_sci.checks import check_int
from normflows_sci.manifolds import as_manifold
from normflows_sci.training.scaffold import (
    TrainingHistory,
    TrainingLoss,
    TrainingOptions,
    option_defaults,
    route_keywords,
    train,
)

__all__ = [
    "fit_flow_matching",
    "FlowMatchingLoss",
    "flow_matching_loss",
    "ot_pairing",
    "EquivariantOT",
]


def _geodesic_cost(a: Tensor, b: Tensor, manifold) -> Tensor:
    """``(len(b), len(a))`` squared geodesic distances on ``manifold`` (``None``: ``R^n``)."""
    return as_manifold(manifold, a.shape[1]).squared_distance_matrix(b, a)


def _interpolant(x0: Tensor, x1: Tensor, t: Tensor, manifold) -> tuple[Tensor, Tensor]:
    """``(x_t, u_t)``: the manifold's geodesic and its velocity (``None``: the straight line)."""
    return as_manifold(manifold, x0.shape[1]).interpolant(x0, x1, t)


def ot_pairing(x0: Tensor, x1: Tensor, manifold=None) -> Tensor:
    """Exact optimal-transport assignment between two equal-size minibatches.

    Returns the permutation ``perm`` minimising ``sum_i ||x0[perm[i]] - x1[i]||^2`` (solved with
    the Hungarian/Jonker-Volgenant algorithm on the ``n x n`` squared-distance matrix), on
    ``x1``'s device. With a ``manifold`` (Torus or Sphere) the cost is the squared geodesic
    distance.

    Example:
        >>> x1 = torch.tensor([[0.0], [10.0]])
        >>> x0 = torch.tensor([[9.0], [1.0]])
        >>> ot_pairing(x0, x1).tolist()
        [1, 0]
    """
    if not isinstance(x0, Tensor) or not isinstance(x1, Tensor):
        raise TypeError("x0 and x1 must be torch.Tensors")
    if x0.shape != x1.shape or x0.ndim < 1:
        raise ValueError(
            f"x0 and x1 must have the same shape (n, ...), got {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )
    a, b = x0.detach().reshape(len(x0), -1), x1.detach().reshape(len(x1), -1)
    cost = _geodesic_cost(a.double(), b.double(), manifold).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(len(x1), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(x1.device)


class EquivariantOT:
    """Equivariant minibatch OT pairing of noise and data for particle systems (Klein, Krämer &
    Noé 2023): a pairing value for ``ot=`` of :func:`fit_flow_matching`, :class:`FlowMatchingLoss`
    and :func:`flow_matching_loss`.

    Every noise sample ``x0[i]`` is aligned to every data sample ``x1[j]`` over permutations of
    the particles and proper rotations (:meth:`~normflows_sci.manifolds.MeanFree.align`: Hungarian
    assignment, then Kabsch, ``iterations`` rounds; the aligned cost is never above the unaligned
    one), the exact assignment then minimises the total aligned squared distance, and each data
    point is paired with its aligned noise sample: a rotated, relabelled copy of a base draw,
    which has the same base density (the base is invariant). Cost: ``batch^2``
    scipy assignments of ``n x n`` particles per minibatch (fine for ``n <= 13`` and batches of a
    few hundred on the CPU) and ``O(batch^2 n d)`` memory.

    Args:
        space: the :class:`~normflows_sci.manifolds.MeanFree` particle space; ``None`` takes the
            flow's manifold (a :func:`~normflows_sci.flows.particle_flow` has one).
        iterations: permutation-then-rotation rounds of each alignment.

    Example:
        >>> from normflows_sci.manifolds import MeanFree
        >>> x1 = torch.tensor([[-1.0, 0.0, 1.0, 0.0]])  # 2 particles in 2-D
        >>> x0 = torch.tensor([[0.0, 1.0, 0.0, -1.0]])  # the same pair turned by 90 degrees
        >>> EquivariantOT(MeanFree(2, 2))(x0, x1).round(decimals=6).abs().tolist()
        [[1.0, 0.0, 1.0, 0.0]]
    """

    def __init__(self, space=None, *, iterations: int = 1):
        if space is not None and not callable(getattr(space, "align", None)):
            raise TypeError(
                f"space must be a particle space with align() (normflows_sci.manifolds.MeanFree), "
                f"got {type(space).__name__}"
            )
        self.space = space
        self.iterations = check_int("iterations", iterations)

    def __repr__(self) -> str:
        return f"EquivariantOT(space={self.space!r}, iterations={self.iterations})"

    def space_for(self, manifold):
        """The particle space the pairing aligns in: ``space``, else the flow's ``manifold``."""
        space = self.space if self.space is not None else manifold
        if not callable(getattr(space, "align", None)):
            raise ValueError(
                "ot='equivariant' needs a particle space: train a flow on MeanFree (e.g. "
                "particle_flow) or pass EquivariantOT(MeanFree(n_particles, spatial_dim)); got "
                f"manifold {space!r}"
            )
        return space

    def __call__(self, x0: Tensor, x1: Tensor, manifold=None) -> Tensor:
        """``(batch, n d)`` noise paired with ``x1``: row ``j`` is the aligned noise sample
        assigned to data point ``j``."""
        space = self.space_for(manifold)
        if x0.shape != x1.shape or x0.ndim != 2:
            raise ValueError(
                f"x0 and x1 must have the same shape (batch, features), got {tuple(x0.shape)} "
                f"and {tuple(x1.shape)}"
            )
        n, width = x1.shape
        noise = x0.detach()[:, None, :].expand(n, n, width).reshape(n * n, width)
        data = x1.detach()[None, :, :].expand(n, n, width).reshape(n * n, width)
        aligned, cost = space.align(noise, data, iterations=self.iterations)
        # cost[i, j]: noise i aligned to data j; rows of the transposed problem are data points.
        _, choice = linear_sum_assignment(cost.view(n, n).T.double().cpu().numpy())
        choice = torch.as_tensor(choice, dtype=torch.long, device=x1.device)
        columns = torch.arange(n, device=x1.device)
        return aligned.view(n, n, width)[choice, columns].to(x1)


def _plain_ot(x0: Tensor, x1: Tensor, manifold=None) -> Tensor:
    return x0[ot_pairing(x0, x1, manifold)]


def _pairing(ot) -> Callable | None:
    """The pairing function ``ot`` stands for (``None``: independent pairs)."""
    if ot is None or ot is False:
        return None
    if ot is True:
        return _plain_ot
    if isinstance(ot, str):
        if ot == "equivariant":
            return EquivariantOT()
        raise ValueError(
            f"ot must be False, True, 'equivariant' or a pairing callable, got the string {ot!r}"
        )
    if callable(ot):
        return ot
    raise TypeError(
        f"ot must be False, True, 'equivariant' or a pairing callable (x0, x1, manifold) -> x0, "
        f"got {type(ot).__name__}"
    )


def flow_matching_loss(
    flow,
    x1: Tensor,
    context: Tensor | None = None,
    *,
    ot: bool | str | Callable = False,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conditional flow-matching loss of ``flow`` (a :class:`~normflows_sci.flows.ContinuousFlow`)
    on a data minibatch ``x1: (batch, D)``: ``mean_i ||v(x_t, t) - (x1 - x0)||^2`` (summed over
    features), with ``x0`` drawn from ``flow.base`` and optionally paired to ``x1`` (``ot``: see
    the module docstring).

    Example:
        >>> from normflows_sci.flows.cnf import CNF
        >>> flow = CNF(2, hidden_features=(8,))
        >>> loss = flow_matching_loss(flow, torch.zeros(16, 2), generator=torch.Generator().manual_seed(0))
        >>> loss.ndim, bool(loss > 0)
        (0, True)
    """
    _check_continuous_flow(flow)
    if not isinstance(x1, Tensor) or x1.ndim != 2 or x1.shape[1] != flow.features:
        shape = getattr(x1, "shape", type(x1).__name__)
        raise ValueError(f"x1 must have shape (batch, {flow.features}), got {shape}")
    _check_sigma(sigma, ot, context)
    pairing = _pairing(ot)
    manifold = getattr(flow.transform, "manifold", None)
    if manifold is not None and sigma > 0:
        raise ValueError("sigma > 0 is only supported in R^n (manifold flows use sigma=0)")
    n = x1.shape[0]
    x0 = flow.base.sample(n, generator=generator).to(x1)
    if pairing is not None:
        x0 = pairing(x0, x1, manifold)
    t = torch.rand(n, 1, generator=generator, dtype=x1.dtype, device=x1.device)
    xt, target = _interpolant(x0, x1, t, manifold)
    if sigma > 0:
        xt = xt + sigma * torch.randn(
            x1.shape, generator=generator, dtype=x1.dtype, device=x1.device
        )
    v = flow.velocity(xt, t, context)
    return (v - target).square().sum(1).mean()


def _check_continuous_flow(flow) -> None:
    if not callable(getattr(flow, "velocity", None)):
        raise TypeError(
            f"flow must be a ContinuousFlow (needs velocity(x, t, context)), got "
            f"{type(flow).__name__}"
        )


def _check_sigma(sigma, ot, context) -> None:
    if _pairing(ot) is not None and context is not None:
        raise ValueError(
            f"ot={ot!r} pairs noise and data across the minibatch, which is not valid for a "
            "conditional flow (context given); use ot=False"
        )
    if isinstance(sigma, bool) or not float(sigma) >= 0:
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")


class FlowMatchingLoss(TrainingLoss):
    """(OT-)conditional flow matching (:func:`flow_matching_loss`) on minibatches of ``data``.

    Minibatches are drawn without replacement within a pass over ``data`` (a fresh permutation
    per pass, independent of the history's epochs); the noise, times and path noise come from a
    second generator. The history's learning rate is the one each step used.

    Args:
        data: ``(n, D)`` training points; ``context``: ``(n, c)`` matching conditions.
        batch_size: minibatch size (at most ``n``).
        ot: how noise and data are paired (unconditional only): ``False`` independently,
            ``True`` by exact minibatch optimal transport, ``"equivariant"`` by equivariant OT
            (:class:`EquivariantOT`) or a pairing callable ``(x0, x1, manifold) -> paired x0``.
        sigma: width of the Gaussian probability path around the interpolant.

    Example:
        >>> from normflows_sci.flows.cnf import CNF
        >>> from normflows_sci.training import TrainingOptions, train
        >>> flow = CNF(2, hidden_features=(8,))
        >>> loss = FlowMatchingLoss(torch.randn(64, 2), batch_size=32)
        >>> len(train(flow, loss, TrainingOptions(max_steps=3, seed=0, progress=False))["loss"])
        3
    """

    rate_before_step = True
    description = "flow matching"

    def __init__(
        self,
        data: Tensor,
        context: Tensor | None = None,
        *,
        batch_size: int = 256,
        ot: bool | str | Callable = False,
        sigma: float = 0.0,
    ):
        if not isinstance(data, Tensor) or data.ndim != 2:
            shape = getattr(data, "shape", type(data).__name__)
            raise ValueError(f"data must be a tensor of shape (n, features), got {shape}")
        if len(data) == 0:
            raise ValueError("data is empty")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or inf values")
        if context is not None and (not isinstance(context, Tensor) or len(context) != len(data)):
            raise ValueError("context must be a tensor with one row per data point")
        _check_sigma(sigma, ot, context)
        # The resolved pairing (an EquivariantOT built once, not per batch).
        self.data, self.context, self.ot, self.sigma = data, context, _pairing(ot), sigma
        self.batch_size = min(check_int("batch_size", batch_size), len(data))

    def check(self, flow) -> None:
        _check_continuous_flow(flow)
        if self.data.shape[1] != flow.features:
            raise ValueError(
                f"data must be a tensor of shape (n, {flow.features}), got {self.data.shape}"
            )
        if isinstance(self.ot, EquivariantOT):  # before training, not at the first batch
            self.ot.space_for(getattr(flow.transform, "manifold", None))

    def start(self, flow, seed: int, rank: int, world: int) -> None:
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator(self.data.device).manual_seed(seed + 1)
        self.order, self.cursor = torch.randperm(len(self.data), generator=self.shuffle_gen), 0

    def next_batch(self):
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.data), generator=self.shuffle_gen)
            self.cursor = 0
        index = self.order[self.cursor : self.cursor + self.batch_size].to(self.data.device)
        self.cursor += self.batch_size
        return self.data[index], None if self.context is None else self.context[index]

    def __call__(self, flow, batch) -> Tensor:
        x1, context = batch
        return flow_matching_loss(
            flow, x1, context, ot=self.ot, sigma=self.sigma, generator=self.noise_gen
        )

    def nonfinite_message(self, step: int) -> str:
        return f"flow-matching loss is not finite at step {step}"

    def after_step(self, flow, batch, loss: Tensor) -> None:
        self.last_loss = float(loss)

    def end_epoch(self, flow, epoch: int, step: int) -> dict:
        return dict(step=step, loss=self.last_loss)


def fit_flow_matching(
    flow,
    data: Tensor,
    *,
    context: Tensor | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    ot: bool | str | Callable = False,
    sigma: float = 0.0,
    **training,
) -> TrainingHistory:
    """Train a continuous flow by (OT-)conditional flow matching (see the module docstring):
    :func:`train` on :class:`FlowMatchingLoss`.

    Simulation-free: no ODE is solved during training. Minibatches are drawn uniformly with
    replacement across epochs (a fresh permutation per pass over ``data``).

    Args:
        flow: a :class:`~normflows_sci.flows.ContinuousFlow` (e.g. from
            :func:`~normflows_sci.flows.CNF`), trained in place.
        data: ``(n, D)`` training points; ``context``: ``(n, c)`` matching conditions.
        steps: optimiser steps.
        batch_size: minibatch size (the OT assignment costs ``O(batch_size^3)`` on the CPU,
            equivariant OT also ``batch_size^2`` particle assignments).
        ot: how noise and data are paired (unconditional only): ``False`` independently,
            ``True`` by exact minibatch optimal transport, ``"equivariant"`` by equivariant OT
            for particle systems (:class:`EquivariantOT`; a flow on
            :class:`~normflows_sci.manifolds.MeanFree` such as
            :func:`~normflows_sci.flows.particle_flow`), or a pairing callable
            ``(x0, x1, manifold) -> paired x0``.
        sigma: width of the Gaussian probability path around the interpolant (0: deterministic).
        **training: the :class:`TrainingOptions` fields ``learning_rate`` (1e-3),
            ``weight_decay`` (0), ``schedule`` (``"cosine"``, to zero over ``steps``, or
            ``"constant"``), ``clip_grad`` (1), ``max_time``, ``seed`` (seeds batches, noise
            and times) and ``progress``.

    Returns:
        :class:`~normflows_sci.training.TrainingHistory`: equal-length lists ``step``, ``loss`` (the minibatch flow-matching loss),
        ``learning_rate`` and ``time`` (seconds since the start).

    Example:
        >>> from normflows_sci.flows.cnf import CNF
        >>> data = 2.0 + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
        >>> flow = CNF(2, hidden_features=(32,), solver="rk4", steps=10, seed=0)
        >>> history = fit_flow_matching(flow, data, steps=200, batch_size=128, learning_rate=1e-2,
        ...                             seed=0, progress=False)
        >>> len(history["loss"])
        200
        >>> with torch.no_grad():
        ...     bool(flow.sample(1000, generator=torch.Generator().manual_seed(1)).mean(0).sub(2).abs().max() < 0.3)
        True
    """
    defaults = option_defaults(
        "learning_rate", "weight_decay", "schedule", "max_time", "seed", "progress", clip_grad=1.0
    )
    options = route_keywords("fit_flow_matching", training, options=defaults)["options"]
    loss = FlowMatchingLoss(data, context, batch_size=batch_size, ot=ot, sigma=sigma)
    options = TrainingOptions(max_steps=check_int("steps", steps), **options)
    return train(flow, loss, options)
