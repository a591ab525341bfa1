"""The package version: a leaf module (no imports), read by ``setup.cfg`` and by every module that
records the version (model files, the command line), so none of them imports the package root."""

__all__ = ["__version__"]

__version__ = "0.1.0"
