"""normflows_sci: normalizing flows for science, in PyTorch.

Exact densities for tabular data, Boltzmann generators and flow-assisted samplers, one library.
"""

__version__ = "0.1.0"

from normflows_sci.estimator import DensityEstimator
from normflows_sci.flows import MAF, NSF, Flow, RealNVP

__all__ = ["__version__", "DensityEstimator", "Flow", "NSF", "MAF", "RealNVP"]
