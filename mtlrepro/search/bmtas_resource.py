r"""BMTAS's proxyless resource loss (Bruggemann, Kanakis, Georgoulis & Van Gool, "Automated Search
for Resource-Efficient Branched Multi-Task Networks", BMVC 2020): the expected cost of the branched
network sampled from the supergraph, and the FLOP count it is measured in.

At searched layer :math:`l` task :math:`t` picks copy :math:`a_{l,t}` of the layer with probability
:math:`p_l[t, i] = \operatorname{softmax}(\alpha_l[t])_i` (:math:`\alpha_l \in R^{T \times T}`, one
copy per task). Two tasks share layer :math:`l` iff they picked the same copies at every layer up
to :math:`l`, so the tasks' grouping :math:`\psi_l` (a partition of the tasks) is the meet of the
choice partition :math:`\pi(a_l)` and :math:`\psi_{l-1}` (:math:`\psi_{-1}`: all tasks together).
The layer costs :math:`|\psi_l|\, c_l` (one copy per group), so

.. math::
    R(\alpha) = \sum_l c_l \sum_k P(\psi_l = k)\, |k| .

Two estimators of :math:`P(\psi_l = k)`:

* ``"released"`` -- the authors' ``BranchingLoss`` (``brdav/bmtas``, ``src/criterion.py``): for every
  partition :math:`k` except the all-singletons one,
  :math:`P_l(k) = P(\pi(a_l) = k) \sum_{q \succeq k} P_{l-1}(q)` (:math:`q` ranging over the
  partitions that :math:`k` refines, :math:`k` included), and the all-singletons partition takes the
  remaining mass. It drops the event "the choices are coarser than :math:`k` and the previous grouping
  already is :math:`k`" (exact for two tasks), so its coarse partitions get too little mass and
  :math:`R` is an over-estimate (at most :math:`T \sum_l c_l`).
* ``"exact"`` -- the Markov chain :math:`P_l(k) = \sum_q P_{l-1}(q) \sum_{a:\, \pi(a) \wedge q = k}
  \prod_t p_l[t, a_t]`, the expectation the paper's text names.

Both enumerate the :math:`T^T` choice vectors per layer, as the released code does (``T <= 6``).

FLOPs follow the released counter (``src/resources.py``, after ASTMT): a convolution costs
:math:`(2 K - 1 + [\text{bias}])` per output element (:math:`K = k_h k_w c_{in} / g`; multiply
and add counted separately), a linear layer likewise, a max / average pool :math:`k_h k_w` per
output element, an adaptive pool one per input element; BatchNorm and activations cost nothing.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["set_partitions", "BranchingResource", "count_flops", "ESTIMATORS"]

Partition = tuple[tuple[int, ...], ...]
ESTIMATORS = ("released", "exact")
MAX_TASKS = 6


def _canon(blocks) -> Partition:
    return tuple(sorted(tuple(sorted(b)) for b in blocks if b))


def set_partitions(n: int) -> list[Partition]:
    """Every partition of ``range(n)`` (Bell(n) of them), canonical, coarsest first."""
    def rec(items: list[int]):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for smaller in rec(rest):
            for i in range(len(smaller)):
                yield smaller[:i] + [[first] + smaller[i]] + smaller[i + 1:]
            yield [[first]] + smaller
    parts = {_canon(p) for p in rec(list(range(n)))}
    return sorted(parts, key=lambda p: (len(p), p))


def _choice_partition(a: Sequence[int]) -> Partition:
    return _canon([[t for t, x in enumerate(a) if x == v] for v in set(a)])


def _meet(p: Partition, q: Partition) -> Partition:
    return _canon([set(a) & set(b) for a in p for b in q])


def _refines(k: Partition, q: Partition) -> bool:
    return all(any(set(b) <= set(c) for c in q) for b in k)


class BranchingResource(nn.Module):
    """Expected cost :math:`R(\\alpha)` of the sampled branched network (module docstring).

    ``costs``: :math:`c_l` per searched layer, ``(L,)``; ``forward(alpha)`` with ``alpha``
    ``(L, T, T)`` returns the scalar :math:`R`; :meth:`grouping_probabilities` the ``(L, K)``
    table :math:`P_l(k)` over :attr:`partitions` (coarsest first, all-singletons last).
    """

    def __init__(self, n_tasks: int, costs: Tensor, estimator: str = "released"):
        super().__init__()
        T = int(n_tasks)
        if not 1 <= T <= MAX_TASKS:
            raise ValueError(f"bmtas resource: {T} tasks; the T^T enumeration is limited to {MAX_TASKS}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"bmtas resource: estimator {estimator!r} is not one of {ESTIMATORS}")
        self.n_tasks, self.estimator = T, estimator
        self.partitions = set_partitions(T)
        index = {p: i for i, p in enumerate(self.partitions)}
        choices = list(itertools.product(range(T), repeat=T))
        # flat indices into p_l (T*T) of each choice vector's factors, and its partition
        self.register_buffer("factor_index", torch.tensor([[t * T + a[t] for t in range(T)] for a in choices]))
        self.register_buffer("choice_part", torch.tensor([index[_choice_partition(a)] for a in choices]))
        # exact chain: meet[q, a] = index of pi(a) ^ q
        self.register_buffer("meet", torch.tensor([[index[_meet(_choice_partition(a), q)] for a in choices]
                                                   for q in self.partitions]))
        # released: ancestors[k, q] = 1 when k refines q
        self.register_buffer("refines", torch.tensor([[float(_refines(k, q)) for q in self.partitions]
                                                      for k in self.partitions]))
        self.register_buffer("n_groups", torch.tensor([float(len(p)) for p in self.partitions]))
        self.register_buffer("costs", torch.as_tensor(costs, dtype=torch.float64).flatten())

    def _choice_probs(self, alpha_l: Tensor) -> Tensor:
        """Probability of every choice vector at one layer, ``(T^T,)``."""
        p = torch.softmax(alpha_l, dim=-1).flatten()
        return p[self.factor_index].prod(dim=1)

    def grouping_probabilities(self, alpha: Tensor) -> Tensor:
        """:math:`P_l(k)`, ``(L, K)``, in ``alpha``'s dtype."""
        L, K = alpha.shape[0], len(self.partitions)
        if alpha.shape[1:] != (self.n_tasks, self.n_tasks) or L != self.costs.numel():
            raise ValueError(f"bmtas resource: alpha {tuple(alpha.shape)} for {self.costs.numel()} layers "
                             f"of {self.n_tasks} tasks")
        prev = alpha.new_zeros(K)
        prev[0] = 1.0                                  # before the first searched layer: one group
        rows = []
        for l in range(L):
            pa = self._choice_probs(alpha[l])
            if self.estimator == "exact":
                trans = alpha.new_zeros(K, K).scatter_add(1, self.meet, pa.expand(K, -1))
                cur = prev @ trans
            else:
                p_choice = alpha.new_zeros(K).scatter_add(0, self.choice_part, pa)
                coarser = self.refines.to(alpha.dtype) @ prev          # sum_{q >= k} P_{l-1}(q)
                cur = (p_choice * coarser)[:-1]
                cur = torch.cat([cur, (1.0 - cur.sum()).unsqueeze(0)])
            rows.append(cur)
            prev = cur
        return torch.stack(rows)

    def forward(self, alpha: Tensor) -> Tensor:
        P = self.grouping_probabilities(alpha)
        return (P * self.n_groups.to(P.dtype)).sum(dim=1) @ self.costs.to(P.dtype)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, layers={self.costs.numel()}, estimator={self.estimator!r}"


def _conv_flops(m: nn.Conv2d, out: Tensor) -> int:
    k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
    return (2 * k - 1 + (m.bias is not None)) * out[0].numel()


def _linear_flops(m: nn.Linear, out: Tensor) -> int:
    return (2 * m.in_features - 1 + (m.bias is not None)) * out[0].numel()


def _pool_flops(m: nn.Module, inp: Tensor, out: Tensor) -> int:
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return inp[0].numel()
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
    return k[0] * k[1] * out[0].numel()


def count_flops(fn: Callable[[], Tensor], modules: nn.Module) -> tuple[int, Tensor]:
    """FLOPs of the calls ``fn()`` makes into the convolutions, linear layers and pools of
    ``modules`` (released convention, per sample of batch index 0), and ``fn()``'s result."""
    total = [0]

    def hook(m: nn.Module, inp, out) -> None:
        if isinstance(m, nn.Conv2d):
            total[0] += _conv_flops(m, out)
        elif isinstance(m, nn.Linear):
            total[0] += _linear_flops(m, out)
        else:
            total[0] += _pool_flops(m, inp[0], out)

    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    handles = [m.register_forward_hook(hook) for m in modules.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = fn()
    finally:
        for h in handles:
            h.remove()
    return total[0], out
