"""CloudRemoteControl: coordinate freshly created cloud machines."""

__version__ = "0.1.0"

__all__ = ["__version__"]
