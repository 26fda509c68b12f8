"""Loss weightings: coefficients on the task losses, one ordinary backward (see ``base``)."""
from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["LossWeighting"]
