"""Training: the maximum-likelihood loop (``fit_flow``)."""

from normflows_sci.training.loop import SCHEDULES, fit_flow

__all__ = ["fit_flow", "SCHEDULES"]
