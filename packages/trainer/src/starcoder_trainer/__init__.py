"""starcoder_trainer (being built)."""

from starcoder_trainer._version import __version__

__all__ = ["__version__"]
