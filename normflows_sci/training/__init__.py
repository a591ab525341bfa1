"""Training: one scaffold (:func:`train` with :class:`TrainingOptions`) and its losses: maximum
likelihood (``fit_flow``), Boltzmann generators (``fit_boltzmann``), flow annealed importance
sampling bootstrap (``fit_fab``) and flow matching (``fit_flow_matching``)."""

from normflows_sci.training.boltzmann import (
    BoltzmannLoss,
    fit_boltzmann,
    forward_kl_loss,
    regularize_energy,
    reverse_kl_loss,
)
from normflows_sci.training.fab import (
    AISResult,
    FABLoss,
    PrioritizedReplayBuffer,
    fab_ais,
    fab_buffer_loss,
    fab_loss,
    fit_fab,
)
from normflows_sci.training.flow_matching import (
    EquivariantOT,
    FlowMatchingLoss,
    fit_flow_matching,
    flow_matching_loss,
    ot_pairing,
)
from normflows_sci.training.loop import MaximumLikelihoodLoss, fit_flow
from normflows_sci.training.scaffold import (
    SCHEDULES,
    TrainingHistory,
    TrainingLoss,
    TrainingOptions,
    train,
)

__all__ = [
    "train",
    "TrainingOptions",
    "TrainingLoss",
    "TrainingHistory",
    "MaximumLikelihoodLoss",
    "fit_flow",
    "SCHEDULES",
    "fit_boltzmann",
    "BoltzmannLoss",
    "forward_kl_loss",
    "reverse_kl_loss",
    "regularize_energy",
    "fit_fab",
    "FABLoss",
    "fab_ais",
    "AISResult",
    "fab_loss",
    "fab_buffer_loss",
    "PrioritizedReplayBuffer",
    "fit_flow_matching",
    "FlowMatchingLoss",
    "flow_matching_loss",
    "ot_pairing",
    "EquivariantOT",
]
