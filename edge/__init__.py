"""Edge licence-plate reader."""

__version__ = "0.1.0"
