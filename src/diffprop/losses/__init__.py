"""Training objectives: small callables ``loss(denoiser, x0, generator) -> per-sample loss``."""
from .denoising import DenoisingLoss

__all__ = ["DenoisingLoss"]
