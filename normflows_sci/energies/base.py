"""The ``Energy`` protocol: dimensionless energies ``u(x) = U(x) / kT`` on batches of configurations.

An energy maps ``x: (batch, *event_shape)`` to ``u: (batch,)``; ``log_prob(x) = -u(x)`` is the
unnormalised log-density of the Boltzmann distribution ``p(x) ∝ exp(-u(x))`` and ``force(x)`` is
``-∇u`` by autograd. Anything with a ``log_prob`` (a Flow included) can be a sampler target.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_tensor

__all__ = ["Energy", "TemperedEnergy"]


class Energy(nn.Module, abc.ABC):
    """Base class of every target: subclasses implement ``_energy(x)`` on validated inputs.

    Args:
        event_shape: shape of one configuration (an int for flat vectors).
        validate_args: check inputs (shape, finiteness) on every call; turn off in tight loops.

    Attributes:
        log_z: the exact log normaliser ``log ∫ exp(-u(x)) dx`` when known, else ``None``.
    """

    log_z: float | None = None

    def __init__(self, event_shape: int | Sequence[int], *, validate_args: bool = True):
        super().__init__()
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        if not shape or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"event_shape must be positive integers, got {event_shape!r}")
        self.event_shape = torch.Size(int(s) for s in shape)
        self.validate_args = validate_args

    @property
    def dim(self) -> int:
        """Number of degrees of freedom of one configuration (product of ``event_shape``)."""
        return math.prod(self.event_shape)

    @abc.abstractmethod
    def _energy(self, x: Tensor) -> Tensor:
        """Energy of validated inputs ``x: (batch, *event_shape)`` -> ``(batch,)``."""

    def energy(self, x: Tensor) -> Tensor:
        """Dimensionless energy ``u(x)`` of shape ``(batch,)``."""
        if self.validate_args:
            check_tensor("x", x, tuple(self.event_shape))
        return self._energy(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log-density ``-u(x)``."""
        return -self.energy(x)

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u(x), -∇u(x))``; the force has the shape of ``x`` and carries no graph."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            u = self.energy(leaf)
            (grad,) = torch.autograd.grad(u.sum(), leaf)
        return u.detach(), -grad

    def force(self, x: Tensor) -> Tensor:
        """``-∇u(x)`` by autograd, shape of ``x``."""
        return self.energy_and_force(x)[1]


class TemperedEnergy(Energy):
    """``energy`` at another temperature: ``u_T(x) = u(x) * reference_temperature / temperature``.

    Args:
        energy: the energy at its own temperature.
        temperature: the new temperature (same unit as the reference), > 0.
        reference_temperature: temperature at which ``energy`` is expressed; defaults to
            ``energy.temperature`` when it has one (e.g. ``OpenMMEnergy``), else 1 (toy targets are
            written at unit temperature).

    >>> from normflows_sci.energies import DoubleWell
    >>> hot = TemperedEnergy(DoubleWell(), temperature=2.0)
    >>> x = torch.zeros(1, 2)
    >>> bool(torch.allclose(hot.energy(x + 1), DoubleWell().energy(x + 1) / 2))
    True
    """

    def __init__(
        self, energy: Energy, temperature: float, reference_temperature: float | None = None
    ):
        if not isinstance(energy, Energy):
            raise TypeError(f"energy must be an Energy, got {type(energy).__name__}")
        if reference_temperature is None:
            reference_temperature = float(getattr(energy, "temperature", 1.0))
        for name, value in (
            ("temperature", temperature),
            ("reference_temperature", reference_temperature),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        super().__init__(energy.event_shape, validate_args=energy.validate_args)
        self.base_energy = energy
        self.temperature = float(temperature)
        self.reference_temperature = float(reference_temperature)
        self.beta = self.reference_temperature / self.temperature

    def _energy(self, x: Tensor) -> Tensor:
        return self.base_energy._energy(x) * self.beta
