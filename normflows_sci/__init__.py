"""normflows_sci: normalizing flows for science, in PyTorch.

Exact densities for tabular data, Boltzmann generators and flow-assisted samplers, one library.
"""

from normflows_sci._version import __version__
from normflows_sci.estimator import DensityEstimator
from normflows_sci.flows import MAF, NSF, Flow, RealNVP

__all__ = ["__version__", "DensityEstimator", "Flow", "NSF", "MAF", "RealNVP"]
