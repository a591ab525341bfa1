"""normflows_sci: normalizing flows for science, in PyTorch.

Exact densities for tabular data, Boltzmann generators and flow-assisted samplers, one library.
"""

from normflows_sci.flows import MAF, NSF, Flow, RealNVP

__version__ = "0.1.0"

__all__ = ["__version__", "Flow", "NSF", "MAF", "RealNVP"]
