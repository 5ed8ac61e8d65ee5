"""inpo: Nash learning from general preferences (INPO and its family)."""

__version__ = "0.1.0"
