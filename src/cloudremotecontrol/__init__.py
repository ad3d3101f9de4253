"""CloudRemoteControl: coordinate freshly created cloud machines."""

__version__ = "0.2.0.dev0"

__all__ = ["__version__"]
