"""GatedMTL (Bejnordi et al., ICLR 2024 submission): learned per-channel gates between a shared
branch and one branch per task, a sparsity loss toward sharing, pruning to a static network.

Where things are: the gate, its straight-through gradient, the mix and the sparsity losses in
:mod:`mtlrepro.models.gated.gates`; the gated conv unit in :mod:`mtlrepro.models.gated.unit`;
pruning and the pruned network's counts in :mod:`mtlrepro.models.gated.prune`; gating patterns
(Figure 3) in :mod:`mtlrepro.models.gated.patterns`.

The encoder is the backbone built once with :class:`~mtlrepro.models.gated.unit.GatedUnit` units;
the image is given to all ``T + 1`` streams (Algorithm 1: ``psi^0 = phi_t^0 = x``), each head reads
its task's stream of the encoder output (Algorithm 1 returns ``[phi_1^L .. phi_T^L]``; the shared
branch's last layer therefore feeds nothing and is pruned). Not task-conditional: one forward gives
every task (Sec. 2: "predict all tasks in a single forward pass").

On the DPT ViTs (:data:`VIT_BACKBONES`, Appendix E) the plain ViT is built first (its weights) and
its patch embedding and block linears are replaced by output-gated layers on ``T`` task streams (the
shared branch's input is always the beta-mix, so it carries no stream of its own):
:mod:`mtlrepro.models.gated.vit`.

Initialisation (Sec. 4.1, "Training pipeline"): ``pretrained`` loads the backbone's ImageNet
weights into every branch (the shared one keeps them); :meth:`load_task_branches` then copies each
task's single-task network (a trained :class:`~mtlrepro.models.sharing.single_task.SingleTask`)
into that task's branches and head - the trainer does this for recipes with ``init_from``.

Keyword arguments: ``sparsity`` (``hinge`` | ``l1`` | ``none``), ``lambda_s`` (Eq. 5's weight),
``tau`` (Eq. 4's per-task targets: one number or one per task), ``gate_lr`` (the gates' own SGD,
Sec. 4.1: 0.1), ``gate_momentum`` (0: the paper names plain SGD), ``alpha_init`` (0.1: every gate
task-specific at the start - the task branches hold the STL networks - but close to the threshold,
sigmoid = 0.525, so the task losses and the sparsity loss can move it within the schedule; the
paper does not say), ``mix_input`` (``gated`` | ``task``, :mod:`~mtlrepro.models.gated.gates`),
``sparsity_reduce`` (``mean`` = Eq. 4 | ``sum``); the rest go to the backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..gated.gates import SPARSITY_FORMS, GateMix, sparsity_loss
from ..gated.unit import GatedUnit
from ..gated.vit import GatedLinear, OutputGatedConv, gate_vit_blocks, load_vit_task
from ..heads import head_factory
from ..interface import MTLModel, PerTask
from ..registries import BACKBONES, SHARING
from ..units import ConvBN

__all__ = ["GatedMTL", "VIT_BACKBONES"]

#: backbones gated as ViTs (Appendix E): output gates on the patch embedding and the block linears
VIT_BACKBONES = ("dpt_vitb", "dpt_vits")


@SHARING.register("gatedmtl")
class GatedMTL(MTLModel):
    """Shared + task-specific branches of every encoder layer, gated per channel and per task."""

    task_conditional = False

    def __init__(self, backbone: str, out_dims: list[int], sparsity: str = "hinge", lambda_s: float = 0.0,
                 tau: float | Sequence[float] = 0.0, gate_lr: float = 0.1, gate_momentum: float = 0.0,
                 alpha_init: float = 0.1, mix_input: str = "gated", sparsity_reduce: str = "mean",
                 **backbone_kwargs):
        super().__init__()
        # build_model's model fields (not this scheme's options: they would enter every fingerprint)
        head, head_kwargs = backbone_kwargs.pop("head", None), backbone_kwargs.pop("head_kwargs", None)
        pretrained = backbone_kwargs.pop("pretrained", None)
        self._set_tasks(backbone, out_dims)
        if sparsity not in SPARSITY_FORMS:
            raise ValueError(f"gatedmtl: sparsity must be one of {', '.join(SPARSITY_FORMS)}, got {sparsity!r}")
        taus = [float(tau)] * self.n_tasks if isinstance(tau, (int, float)) else [float(t) for t in tau]
        if len(taus) != self.n_tasks:
            raise ValueError(f"gatedmtl: tau needs one target per task ({self.n_tasks}), got {len(taus)}")
        if sparsity_reduce not in ("mean", "sum"):
            raise ValueError(f"gatedmtl: sparsity_reduce must be 'mean' or 'sum', got {sparsity_reduce!r}")
        self.sparsity, self.lambda_s, self.gate_lr, self.gate_momentum = sparsity, float(lambda_s), float(gate_lr), \
            float(gate_momentum)
        self.sparsity_reduce = sparsity_reduce
        self.register_buffer("tau", torch.tensor(taus), persistent=False)
        builder = BACKBONES.get(backbone)
        self.vit = backbone in VIT_BACKBONES
        if self.vit:   # Appendix E: the plain ViT (its weights), then its layers gated in place
            bb = builder(ConvBN, pretrained=pretrained, **backbone_kwargs)
            plain = bb.encoder.patch_embed
            bb.encoder.patch_embed = OutputGatedConv(plain.spec, self.n_tasks, alpha_init)
            for branch in bb.encoder.patch_embed.branches():
                branch.load_state_dict(plain[0].state_dict())
            gate_vit_blocks(bb.encoder.blocks, self.n_tasks, alpha_init)
            pretrained = None
        else:
            bb = builder(lambda spec: GatedUnit(spec, self.n_tasks, alpha_init, mix_input), **backbone_kwargs)
        #: activations are stacked streams: the shared one first (conv units), then one per task
        self.n_streams, self.task_offset = (self.n_tasks, 0) if self.vit else (self.n_tasks + 1, 1)
        self.encoder = bb.encoder
        self.feature_dim = bb.feature_dim
        make_head = head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])
        if not self.gated_units():
            raise ValueError(f"gatedmtl: backbone {backbone!r} builds no conv unit through make_unit")
        if pretrained is not None:
            plain = builder(ConvBN, pretrained=pretrained, **backbone_kwargs)
            self.load_plain_encoder(plain.encoder)

    # --- structure ----------------------------------------------------------------------------
    def gated_units(self) -> list[nn.Module]:
        """The encoder's gated layers in forward order: conv units (the first, on the image, has no
        gate), or a ViT's patch embedding and block linears (:mod:`~mtlrepro.models.gated.vit`)."""
        if self.vit:
            return [m for m in self.encoder.modules() if isinstance(m, (OutputGatedConv, GatedLinear))]
        return [u for u in self.encoder.units() if isinstance(u, GatedUnit)]

    def units(self) -> list[nn.Module]:
        """The backbone's conv units (each holding its shared and task branches)."""
        return self.encoder.units()

    def gate_mixes(self) -> list[GateMix]:
        """The ``L`` gated layers of Eq. 4."""
        return [u.mix for u in self.gated_units() if u.mix is not None]

    def gate_parameters(self) -> list[nn.Parameter]:
        """``alpha`` and ``beta`` of every gated layer: the gates' own optimizer (Sec. 4.1)."""
        return [p for m in self.gate_mixes() for p in (m.alpha, m.beta)]

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError("gatedmtl is not task-conditional: call model(x) (returns all tasks)")
        s, b = self.n_streams, x.shape[0]
        z = self.encoder(x.repeat(s, *([1] * (x.dim() - 1))))
        z = z.view(s, b, *z.shape[1:])
        return [h(z[self.task_offset + t]) for t, h in enumerate(self.heads)]

    def regularization_loss(self) -> Tensor | None:
        """``lambda_s L_sparsity(alpha)`` (Eq. 5), or None when it is off (``lambda_s`` 0 or ``none``)."""
        if self.lambda_s == 0.0 or self.sparsity == "none":
            return None
        return self.lambda_s * sparsity_loss(self.gate_mixes(), self.sparsity, self.tau, self.sparsity_reduce)

    # --- initialisation -----------------------------------------------------------------------
    def load_plain_encoder(self, plain: nn.Module) -> None:
        """Copy a plain (``ConvBN``-unit) encoder of the same backbone into every branch, and its
        parameters outside the units (e.g. a ViT's tokens) into the shared ones."""
        gated, units = self.encoder.units(), plain.units()
        if len(gated) != len(units):
            raise ValueError(f"gatedmtl: the plain encoder has {len(units)} units, the gated one {len(gated)}")
        for g, u in zip(gated, units):
            for branch in g.branches():
                branch.load_state_dict(u.state_dict())
        inside = {n for n, m in plain.named_modules() if any(m is u for u in units)}
        own = self.encoder.state_dict()
        for k, v in plain.state_dict().items():
            if not any(k.startswith(p + ".") for p in inside) and k in own and own[k].shape == v.shape:
                own[k].copy_(v)

    def load_task_branches(self, stl: nn.Module) -> None:
        """Task ``t``'s branches and head from network ``t`` of a trained ``single_task`` model."""
        if getattr(stl, "n_tasks", None) != self.n_tasks or not hasattr(stl, "nets"):
            raise ValueError(f"gatedmtl: init_from needs a single_task model of {self.n_tasks} tasks, "
                             f"got {type(stl).__name__}")
        if self.vit:
            for t in range(self.n_tasks):
                load_vit_task(self.encoder, stl.nets[t], t)
                self.heads[t].load_state_dict(stl.heads[t].state_dict())
            return
        gated = self.encoder.units()
        for t in range(self.n_tasks):
            units = stl.units(t)
            if len(units) != len(gated):
                raise ValueError(f"gatedmtl: STL network {t} has {len(units)} conv units, the gated encoder "
                                 f"{len(gated)}: not the same backbone")
            for g, u in zip(gated, units):
                g.tasks[t].load_state_dict(u.state_dict())
            self.heads[t].load_state_dict(stl.heads[t].state_dict())

    # --- gates as data ------------------------------------------------------------------------
    def export_gating(self) -> dict:
        """The trained gates (what pruning needs) and the mix weights, for the run record."""
        from ..gated.patterns import export_gating
        return export_gating(self)
