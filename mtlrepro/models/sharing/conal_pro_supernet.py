r"""CoNAL-Pro's progressive search space (Yue, Zhang & Liang, AAAI 2023, Sec. 2.4, Fig. 1c).

With ``M`` branch modules (ResNets: stem, layer1..layer4) the search runs ``M`` stages. Stage
``s = 0..M-1`` decides module :math:`k = M-1-s` (the paper's "stage ``s+1``"; stage 0 decides the
LAST shared module). Each task still in the search has two choices (two logits
:math:`\alpha^{(s)}_t \in R^2`, softmax-mixed like CoNAL's branch points):

* **shared** (index 0, the paper's branch point ``k + 2`` in its 1-based numbering): the all-shared
  trunk :math:`f_S` up to and including module ``k``, then the stage's new *group chain*
  :math:`H_s` (modules ``k+1..M-1``, shared by every task still in the search; empty at stage 0,
  where "shared" is the whole trunk :math:`f_S^{(p-1)}`; at stage 1 it is the paper's
  :math:`h_S^{(p-1)}`);
* **own** (index 1): the trunk up to module ``k - 1``, then the task's purely-specific modules
  :math:`h_t^{(k..M-1)}` (one encoder per task, the same module serving every stage, as CoNAL's
  :math:`h_t`).

.. math::
    o_t = \mathrm{softmax}(\alpha^{(s)}_t)_0 \, H_s(f_S^{(\le k)}(x))
        + \mathrm{softmax}(\alpha^{(s)}_t)_1 \, h_t^{(k..M-1)}(f_S^{(< k)}(x)).

At the end of a stage (:meth:`advance_to`) each searching task takes the argmax (a tie goes to
**shared**, ``torch.argmax``'s first index); those choosing shared form subgroup :math:`G_s`, which
keeps :math:`f_S^{(\le k)}` + :math:`H_s` from then on and leaves the search. After stage ``M-1``
(module 0) the tasks still choosing own keep separate networks (the paper's "purely-specific
modules after branch point 1"). The result is a tree (:meth:`export_architecture`): the trunk,
from which subgroup :math:`G_s` branches after module ``M-1-s``; the ``branched`` scheme retrains it.

Harness constraints (the trainer builds its optimizer once, on the model's parameters at the
start): the supernet holds, from construction, the trunk, one full encoder per task and the
``M - 1`` group chains (chain ``s`` keeps only modules ``M-s..M-1``); a module outside the current
stage's graph gets no gradient (Adam skips it). The stage state is two buffers (``stage``, and
``decided[t]``: the stage at which task ``t`` chose shared, -1 while it searches), so checkpoints
carry it. The search method (``conal_pro_search``) calls :meth:`advance_to` from its epoch schedule.

Options: ``group_init`` — how a new group chain starts: ``"fresh"`` (default: as built, i.e. the
backbone's initialisation or the same ImageNet weights as every encoder; the paper says the
module is "added") or ``"trunk"`` (copied from the trained trunk modules at the stage change);
``head`` / ``head_kwargs`` and backbone keyword arguments.

Not in the released code (``yuezhixiong/CoNAL`` ships CoNAL on NYUv2 only) and the appendix is not
in the text: the two-choice mixture, the group-chain layout for stages >= 2 and the tie rule are
this implementation's reading of Sec. 2.4.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...search.architecture import BranchedArchitecture
from ..heads import head_factory
from ..interface import MTLModel, PerTask
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["CoNALProSupernet", "SHARED", "OWN"]

SHARED, OWN = 0, 1   # the two choices of a stage (alpha[s][t] = (shared, own) logits)


@SHARING.register("conal_pro_supernet")
class CoNALProSupernet(MTLModel):
    """Trunk + group chains + one task encoder per task, searched stage by stage (module docstring)."""

    task_conditional = False
    needs_branch_modules = True   # a backbone with ResNetStages' branch modules
    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 group_init: str = "fresh", **backbone_kwargs: Any):
        super().__init__()
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        self._set_tasks(backbone, out_dims)
        if group_init not in ("fresh", "trunk"):
            raise ValueError(f"conal_pro_supernet: group_init must be 'fresh' or 'trunk', got {group_init!r}")
        self.group_init = group_init
        builder = BACKBONES.get(backbone)
        bb = builder(ConvBN, **backbone_kwargs)
        M = getattr(bb.encoder, "n_branch_modules", None)
        if M is None:
            raise ValueError(f"conal_pro_supernet needs a backbone with branch modules (ResNetStages); "
                             f"got {backbone!r}")
        self.n_modules = M
        self.encoder = bb.encoder                                   # f_S, the all-shared trunk
        self.own = PerTask([builder(ConvBN, **backbone_kwargs).encoder for _ in self.out_dims])
        chains = []
        for s in range(M):                                          # chain s: modules M-s..M-1 (chain 0 empty)
            enc = builder(ConvBN, **backbone_kwargs).encoder
            enc.keep_branch_modules(range(M - s, M))
            chains.append(enc)
        self.chains = nn.ModuleList(chains)
        make_head = head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])
        self.feature_dim = bb.feature_dim
        self.alpha = nn.ParameterList([nn.Parameter(torch.ones(self.n_tasks, 2)) for _ in range(M)])
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_buffer("decided", torch.full((self.n_tasks,), -1, dtype=torch.long))
        self._state_cache: tuple[int, list[int]] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_state_cache", None))

    # --- the stage state -----------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return self.n_modules

    def stage_state(self) -> tuple[int, list[int]]:
        """``(stage, decided)`` as Python values (cached: no host sync per forward)."""
        if self._state_cache is None:
            self._state_cache = (int(self.stage), [int(d) for d in self.decided.tolist()])
        return self._state_cache

    def module_under_decision(self, stage: int | None = None) -> int:
        return self.n_modules - 1 - (self.stage_state()[0] if stage is None else stage)

    def searching_tasks(self) -> list[int]:
        """The tasks still in the search (not yet allocated to a subgroup)."""
        return [t for t, d in enumerate(self.stage_state()[1]) if d < 0]

    def choices(self, stage: int | None = None) -> list[int]:
        """argmax of the stage's logits per task (``SHARED`` on a tie)."""
        s = self.stage_state()[0] if stage is None else stage
        return [int(c) for c in self.alpha[s].detach().argmax(dim=-1).tolist()]

    @torch.no_grad()
    def advance_to(self, stage: int) -> None:
        """Close every stage before ``stage`` (at most ``M - 1``): its searching tasks that choose
        shared leave the search as one subgroup. Idempotent; never goes back."""
        stage = min(int(stage), self.n_modules - 1)
        while self.stage_state()[0] < stage:
            s, decided = self.stage_state()
            choice = self.choices(s)
            for t in range(self.n_tasks):
                if decided[t] < 0 and choice[t] == SHARED:
                    self.decided[t] = s
            self.stage += 1
            self._state_cache = None
            if self.group_init == "trunk":   # the new stage's chain starts from the trained trunk
                for k in range(self.n_modules - 1 - s, self.n_modules):
                    self.chains[s + 1].branch_module(k).load_state_dict(self.encoder.branch_module(k).state_dict())

    # --- the architecture ----------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)

    def branch_probabilities(self, stage: int | None = None) -> Tensor:
        """softmax over (shared, own) of a stage's logits, ``(T, 2)`` (default: the current stage)."""
        s = self.stage_state()[0] if stage is None else stage
        return F.softmax(self.alpha[s], dim=-1)

    def _plan(self) -> tuple[list[int], list[str], bool]:
        """The tree the current stage's argmax gives: per task ``b_t`` (trunk modules ``0..b_t-1``)
        and the source of its modules ``b_t..M-1``; and whether every task is allocated."""
        M = self.n_modules
        s, decided = self.stage_state()
        choice = self.choices(s)
        decided = [s if d < 0 and choice[t] == SHARED else d for t, d in enumerate(decided)]
        b = [M - d if d >= 0 else M - 1 - s for d in decided]     # still own: own from module k
        src = [f"chains.{d}" if d >= 0 else f"own.{t}" for t, d in enumerate(decided)]
        complete = s == M - 1 or all(d >= 0 for d in decided)
        return b, src, complete

    def export_architecture(self) -> dict[str, Any]:
        """The tree (groups per module), each group's supernet source, and the provenance: per
        stage, the tasks searching, those that chose shared (the subgroup) and the probabilities."""
        M, T = self.n_modules, self.n_tasks
        b, src, complete = self._plan()
        groups, sources = [], []
        for k in range(M):
            trunk = [t for t in range(T) if b[t] > k]
            rest: dict[str, list[int]] = {}
            for t in range(T):
                if b[t] <= k:
                    rest.setdefault(src[t], []).append(t)
            level = ([(trunk, "encoder")] if trunk else []) + [(g, name) for name, g in rest.items()]
            level.sort(key=lambda gs: gs[0][0])
            groups.append([g for g, _ in level])
            sources.append([name for _, name in level])
        arch = BranchedArchitecture(T, groups)
        assert [list(map(list, level)) for level in arch.groups] == groups   # sources stay aligned
        s_now, decided = self.stage_state()
        names = getattr(self.encoder, "branch_module_names", tuple(str(k) for k in range(M)))
        stages = []
        for s in range(s_now + 1):
            searching = [t for t in range(T) if decided[t] < 0 or decided[t] >= s]
            if not searching:      # every task allocated before this stage: nothing was decided
                break
            choice = self.choices(s)
            probs = self.branch_probabilities(s).detach().cpu()
            k = M - 1 - s
            stages.append({"stage": s + 1, "module": names[k], "module_index": k, "searching": searching,
                           "shared": [t for t in searching if choice[t] == SHARED],
                           "probabilities": {str(t): [round(float(v), 6) for v in probs[t]] for t in searching}})
        subgroups = [st["shared"] for st in stages if st["shared"]]
        separate = [t for t in range(T) if src[t].startswith("own.")]
        return {**arch.to_dict(), "method": "conal_pro", "complete": bool(complete), "stages": stages,
                "subgroups": subgroups, "separate": separate, "sources": sources}

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("conal_pro_supernet is not task-conditional: call model(x) (returns all tasks)")
        M = self.n_modules
        s, decided = self.stage_state()
        k = M - 1 - s
        trunk = [x]

        def upto(j: int) -> Tensor:      # the output of trunk modules 0..j-1
            while len(trunk) <= j:
                trunk.append(self.encoder.forward_branch_module(len(trunk) - 1, trunk[-1]))
            return trunk[j]

        chain_out: dict[int, Tensor] = {}

        def chain(r: int) -> Tensor:     # subgroup r: trunk 0..M-1-r, then chain r
            if r not in chain_out:
                h = upto(M - r)
                for j in range(M - r, M):
                    h = self.chains[r].forward_branch_module(j, h)
                chain_out[r] = h
            return chain_out[r]

        w = self.branch_probabilities(s) if any(d < 0 for d in decided) else None
        feats = []
        for t, d in enumerate(decided):
            if d >= 0:
                feats.append(chain(d))
                continue
            h = upto(k)
            for j in range(k, M):
                h = self.own[t].forward_branch_module(j, h)
            feats.append(w[t, SHARED] * chain(s) + w[t, OWN] * h)
        return [head(self.encoder.readout(f)) for head, f in zip(self.heads, feats)]

    # --- partition -----------------------------------------------------------------------------
    def decision_module_parameters(self) -> list[nn.Parameter]:
        """:math:`\\theta_S^{k}`: the trunk module the current stage decides (Eq. 5's block)."""
        return list(self.encoder.branch_module(self.module_under_decision()).parameters())

    def successor_shared_parameters(self) -> list[nn.Parameter]:
        """The current stage's group chain :math:`H_s` (the shared modules after module ``k``)."""
        return list(self.chains[self.stage_state()[0]].parameters())

    def path_parameters(self, tasks: list[int]) -> list[nn.Parameter]:
        """The parameters the current stage's forward runs for ``tasks`` (each once). The search
        takes gradients w.r.t. these only: the trainer stacks every task's loss, so a gradient
        w.r.t. all parameters would give every module a zero (not absent) gradient, which Adam
        would still step with its momentum and weight decay."""
        M = self.n_modules
        s, decided = self.stage_state()
        k = M - 1 - s
        mods: list[nn.Module] = []
        for t in tasks:
            d = decided[t]
            last = M - 1 - d if d >= 0 else k                 # the last trunk module the task reads
            mods += [self.encoder.branch_module(j) for j in range(last + 1)]
            mods += [self.chains[d if d >= 0 else s], self.heads[t]]
            if d < 0:
                mods += [self.own[t].branch_module(j) for j in range(k, M)]
        seen: set[int] = set()
        out = []
        for p in (p for m in mods for p in m.parameters()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk and the group chains (not alpha, not the task encoders or heads)."""
        return [*self.encoder.parameters(), *self.chains.parameters()]

    def conflict_modules(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Per branch module, the copies the current argmax tree runs for more than one task."""
        arch = self.export_architecture()
        names = self.encoder.branch_module_names
        return [(names[k], [p for g, name in zip(arch["groups"][k], arch["sources"][k]) if len(g) > 1
                            for p in self.get_submodule(name).branch_module(k).parameters()])
                for k in range(self.n_modules)]

    def units(self) -> list[nn.Module]:
        return [*self.encoder.units(), *(u for enc in self.chains for u in enc.units()),
                *(u for enc in self.own for u in enc.units())]

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.last_shared_layer()

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, n_modules={self.n_modules}, group_init={self.group_init!r}"
