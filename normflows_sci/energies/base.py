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

from normflows_sci.checks import check_tensor, guard_override

__all__ = ["Energy", "TemperedEnergy"]


class Energy(nn.Module, abc.ABC):
    """Base class of every target.

    Subclasses implement ``_energy(x)``, called on validated inputs, or (the plain form) override
    ``energy(x)`` itself; either way ``log_prob``, ``force`` and ``energy_and_force`` follow, and
    an overridden ``energy`` gets the same input checks first.

    Args:
        event_shape: shape of one configuration (an int for flat vectors). Optional: when left
            out, it is read from the first batch evaluated (``x.shape[1:]``) and later batches
            are checked against it.
        validate_args: check inputs (shape, finiteness) on every call; turn off in tight loops.

    Attributes:
        log_z: the exact log normaliser ``log ∫ exp(-u(x)) dx`` when known, else ``None``.
        event_shape: ``torch.Size``, or ``None`` until inferred.

    Example:
        >>> class Harmonic(Energy):
        ...     def __init__(self):
        ...         super().__init__()
        ...     def energy(self, x):
        ...         return 0.5 * x.square().sum(-1)
        >>> target = Harmonic()
        >>> target.force(torch.tensor([[1.0, -2.0]])).tolist(), target.event_shape
        ([[-1.0, 2.0]], torch.Size([2]))
    """

    log_z: float | None = None

    def __init__(
        self, event_shape: int | Sequence[int] | None = None, *, validate_args: bool = True
    ):
        super().__init__()
        self.event_shape = None if event_shape is None else _event_shape(event_shape)
        self.validate_args = validate_args

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass overriding energy itself still gets the input checks.
        guard_override(cls, "energy", "_energy", "_check")

    @property
    def dim(self) -> int:
        """Number of degrees of freedom of one configuration (product of ``event_shape``)."""
        if self.event_shape is None:
            raise ValueError(
                f"{type(self).__name__} has no event_shape yet: pass event_shape to "
                "Energy.__init__ or evaluate the energy on a batch first"
            )
        return math.prod(self.event_shape)

    @abc.abstractmethod
    def _energy(self, x: Tensor) -> Tensor:
        """Energy of validated inputs ``x: (batch, *event_shape)`` -> ``(batch,)``."""

    def _check(self, x: Tensor) -> None:
        """Record the event shape from the first batch if unknown; validate with
        ``validate_args``."""
        if self.event_shape is None:
            if not isinstance(x, Tensor) or x.ndim < 2:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"x must be a tensor of shape (batch, *event_shape), got {shape}")
            self.event_shape = torch.Size(x.shape[1:])
        if self.validate_args:
            check_tensor("x", x, tuple(self.event_shape))

    def energy(self, x: Tensor) -> Tensor:
        """Dimensionless energy ``u(x)`` of shape ``(batch,)``."""
        self._check(x)
        return self._energy(x)

    energy._checks_inputs = True

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


def _event_shape(event_shape: int | Sequence[int]) -> torch.Size:
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if not shape or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"event_shape must be positive integers, got {event_shape!r}")
    return torch.Size(int(s) for s in shape)


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
