"""Training: maximum likelihood (``fit_flow``), Boltzmann generators (``fit_boltzmann``) and
flow annealed importance sampling bootstrap (``fit_fab``)."""

from normflows_sci.training.boltzmann import (
    fit_boltzmann,
    forward_kl_loss,
    regularize_energy,
    reverse_kl_loss,
)
from normflows_sci.training.fab import (
    PrioritizedReplayBuffer,
    fab_ais,
    fab_buffer_loss,
    fab_loss,
    fit_fab,
)
from normflows_sci.training.flow_matching import fit_flow_matching, flow_matching_loss, ot_pairing
from normflows_sci.training.loop import SCHEDULES, fit_flow

__all__ = [
    "fit_flow",
    "SCHEDULES",
    "fit_boltzmann",
    "forward_kl_loss",
    "reverse_kl_loss",
    "regularize_energy",
    "fit_fab",
    "fab_ais",
    "fab_loss",
    "fab_buffer_loss",
    "PrioritizedReplayBuffer",
    "fit_flow_matching",
    "flow_matching_loss",
    "ot_pairing",
]
