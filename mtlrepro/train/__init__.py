"""Training harness: one (recipe, seed) run, resumable from per-epoch checkpoints."""
from .faults import EnvironmentFault
from .trainer import RunFailed, train_run

__all__ = ["EnvironmentFault", "RunFailed", "train_run"]
