"""Training objectives: the denoising loss and regularizers, small callables over a denoiser."""
from .denoising import DenoisingLoss
from .objective import REGISTRY, Objective, Term

__all__ = ["REGISTRY", "DenoisingLoss", "Objective", "Term"]
