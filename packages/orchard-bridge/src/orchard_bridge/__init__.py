"""orchard_bridge (being built)."""

from orchard_bridge._version import __version__

__all__ = ["__version__"]
