"""The interface between datasets and the trainer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch


class Evaluator(Protocol):
    def update(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None: ...
    def compute(self) -> dict[str, float]: ...


@dataclass
class Split:
    """Device-resident tensors of one split: inputs and one target tensor per task."""

    inputs: torch.Tensor
    targets: list[torch.Tensor]

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class Problem:
    name: str
    task_names: list[str]
    out_dims: list[int]
    input_shape: tuple[int, ...]                 # (C, H, W) the model sees
    train: Split
    eval: Split
    eval_split: str
    synthetic: bool
    data_info: dict[str, Any]
    prepare: Callable[[torch.Tensor], torch.Tensor]          # uint8 batch -> normalised float
    task_loss: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
    new_evaluator: Callable[[], Evaluator]
    primary_metrics: list[str] = field(default_factory=list)
    #: training augmentation on the device: (uint8 images, stored targets, CPU generator) -> the same,
    #: applied to training batches only, with a generator seeded by (seed, epoch, step)
    augment: Callable[[torch.Tensor, list[torch.Tensor], torch.Generator],
                      tuple[torch.Tensor, list[torch.Tensor]]] | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def train_batches(self, batch_size: int, epoch: int, seed: int,
                      max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Shuffled batches; the order depends only on (seed, epoch), so a resumed run sees the
        same batches as an uninterrupted one. The last partial batch is dropped (as the
        reference loaders' drop_last would; it keeps batch statistics comparable) - except
        when the whole split is smaller than one batch (tiny sets): then it is one short batch.
        With ``augment`` each raw batch (uint8 inputs, stored targets) is augmented before
        ``prepare``, its random draws from a CPU generator seeded by (seed, epoch, step) alone, so a
        resumed run sees the same augmented batches too. Eval batches are never augmented."""
        n = len(self.train)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).to(self.train.inputs.device)
        steps = max(n // batch_size, 1)
        if max_steps is not None:
            steps = min(steps, max_steps)
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x, ys = self.train.inputs[idx], [t[idx] for t in self.train.targets]
            if self.augment is not None:
                ga = torch.Generator().manual_seed(((seed * 100_003 + epoch) * 1_000_003 + i) % 2**63)
                x, ys = self.augment(x, ys, ga)
            yield self.prepare(x), ys

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        n = len(self.eval)
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            yield self.prepare(self.eval.inputs[sl]), [t[sl] for t in self.eval.targets]

    def steps_per_epoch(self, batch_size: int, max_steps: int | None = None) -> int:
        steps = max(len(self.train) // batch_size, 1)
        return min(steps, max_steps) if max_steps is not None else steps
