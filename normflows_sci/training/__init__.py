"""Training: maximum likelihood (``fit_flow``) and Boltzmann generators (``fit_boltzmann``)."""

from normflows_sci.training.boltzmann import (
    fit_boltzmann,
    forward_kl_loss,
    regularize_energy,
    reverse_kl_loss,
)
from normflows_sci.training.loop import SCHEDULES, fit_flow

__all__ = [
    "fit_flow",
    "SCHEDULES",
    "fit_boltzmann",
    "forward_kl_loss",
    "reverse_kl_loss",
    "regularize_energy",
]
