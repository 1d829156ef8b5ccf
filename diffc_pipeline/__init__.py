"""DiffC: lossy compression with Gaussian diffusion, at dataset scale."""

__version__ = "0.1.0"
