"""barctl: declarative Branch-Adapt-Route modular post-training."""

__version__ = "0.1.0"
