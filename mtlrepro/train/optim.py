"""The optimizer and the learning-rate schedule a recipe asks for.

* :func:`build_optimizer` - ``adam`` (fused) or ``sgd`` (momentum 0.9) with the recipe's lr and
  weight decay, on parameters or parameter groups;
* :func:`model_param_groups` - the model's parameters (less those a method steps itself) as
  optimizer groups: one group at ``lr``, or, with ``encoder_lr`` set, the heads (decoders) at
  ``lr`` and everything else (the encoders, the scheme's sharing modules) at ``encoder_lr`` -
  DPT's recipe (Ranftl et al. 2021, ``train``: Adam 1e-5 for the ViT, 1e-4 for the decoder;
  GatedMTL Appendix A.3);
* :func:`build_lr_schedule` - stepped once per epoch:

  - ``step:<k>:<gamma>``: ``lr_e = lr_0 gamma^floor(e / k)`` (``StepLR``; LibMTL's default
    ``step:100:0.5``, GatedMTL's CelebA ``step:20:0.3333333333333333``);
  - ``poly:<power>``: ``lr_e = lr_0 (1 - e / E)^power`` for epoch ``e = 0 .. E-1`` of ``E``
    (Vandenhende et al., ``utils/utils.py`` ``adjust_learning_rate``, set at the start of each
    epoch; GatedMTL Appendix A.2: power 0.9).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..recipe import Recipe

__all__ = ["build_optimizer", "build_lr_schedule", "model_param_groups", "poly_factor", "with_gate_optimizer",
           "CompositeOptimizer"]


def build_optimizer(recipe: Recipe, params: Iterable[Any]) -> torch.optim.Optimizer:
    """``params``: parameters or parameter groups (dicts with ``params`` and optionally ``lr``)."""
    if recipe.optimizer == "adam":
        # fused: one kernel for all parameters; 4-7x faster than the default on CPU, and the
        # steady-state schemes take one optimizer step per task (40 per batch on CelebA-40)
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} (adam, sgd)")


def model_param_groups(recipe: Recipe, model: nn.Module, weighting) -> list[dict[str, Any]]:
    """The optimizer's groups for ``model`` trained with ``weighting`` (see the module docstring):
    parameters the method steps itself (``model_parameters_it_steps``) are left out, the
    method's own parameters for the model's optimizer (``parameters_for_model_optimizer``) join
    the ``lr`` group."""
    stepped = {id(p) for p in weighting.model_parameters_it_steps(model)}
    stepped |= {id(p) for p in getattr(model, "gate_parameters", lambda: [])()}   # their own optimizer
    own = list(weighting.parameters_for_model_optimizer())
    params = [p for p in model.parameters() if id(p) not in stepped]
    encoder_lr = getattr(recipe, "encoder_lr", None)
    if encoder_lr is None:
        return [{"params": [*params, *own]}]
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.Module):
        raise ValueError(f"{recipe.id}: encoder_lr needs a model with per-task heads (model.heads); "
                         f"{type(model).__name__} has none")
    head_ids = {id(p) for p in heads.parameters()}
    decoder = [p for p in params if id(p) in head_ids]
    encoder = [p for p in params if id(p) not in head_ids]
    return [{"params": encoder, "lr": float(encoder_lr)}, {"params": [*decoder, *own]}]


def poly_factor(epoch: int, epochs: int, power: float) -> float:
    """Vandenhende's polynomial decay factor ``(1 - epoch / epochs)^power``."""
    return (1.0 - epoch / max(epochs, 1)) ** power


def build_lr_schedule(recipe: Recipe, optimizer: torch.optim.Optimizer):
    """The recipe's learning-rate schedule, stepped once per epoch (None: constant lr)."""
    spec = recipe.lr_schedule
    if not spec:
        return None
    parts = spec.split(":")
    try:
        if parts[0] == "step" and len(parts) == 3:
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(parts[1]), gamma=float(parts[2]))
        if parts[0] == "poly" and len(parts) == 2:
            power, epochs = float(parts[1]), int(recipe.epochs)
            return torch.optim.lr_scheduler.LambdaLR(optimizer, _Poly(epochs, power))
    except ValueError:
        pass
    raise ValueError(f"{recipe.id}: unknown lr_schedule {spec!r} (step:<epochs>:<gamma>, e.g. step:100:0.5; "
                     f"poly:<power>, e.g. poly:0.9)")


class _Poly:
    """Picklable lr lambda (LambdaLR's state_dict stores callable objects' ``__dict__``)."""

    def __init__(self, epochs: int, power: float):
        self.epochs, self.power = int(epochs), float(power)

    def __call__(self, epoch: int) -> float:
        return poly_factor(epoch, self.epochs, self.power)


class CompositeOptimizer:
    """Several optimizers stepped as one (the model's and its gates'): ``zero_grad`` / ``step`` /
    ``state_dict`` of each; ``param_groups`` lists the first one's groups first (the recipe's lr is
    ``param_groups[0]``); the lr schedule is built on the first one only."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"composite": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state.get("composite")
        if parts is None or len(parts) != len(self.optimizers):
            raise ValueError(f"optimizer state of {len(parts or [])} parts for {len(self.optimizers)} optimizers")
        for o, sd in zip(self.optimizers, parts):
            o.load_state_dict(sd)


def with_gate_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """``optimizer`` and, when the model has gate parameters (GatedMTL), their own SGD at the
    model's ``gate_lr`` (Sec. 4.1: "SGD with a learning rate of 0.1 for the gates' parameters";
    momentum ``gate_momentum``, default 0; no weight decay; the lr schedule does not apply to it)."""
    gates = list(getattr(model, "gate_parameters", lambda: [])())
    if not gates:
        return optimizer
    sgd = torch.optim.SGD(gates, lr=float(model.gate_lr), momentum=float(getattr(model, "gate_momentum", 0.0)))
    return CompositeOptimizer(optimizer, sgd)
