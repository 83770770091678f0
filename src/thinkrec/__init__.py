"""thinkrec: reasoning-enhanced generative recommendation."""

__version__ = "0.1.0"
