"""Multi-task methods behind one contract (:class:`Weighting`), split by what they need.

    >>> from mtlrepro.methods import WEIGHTINGS, build_weighting
    >>> {"equal", "gradnorm", "dwa", "uw", "mgda", "mgda_ub", "pcgrad", "cagrad"} <= set(WEIGHTINGS.names())
    True
    >>> w = build_weighting("gradnorm", n_tasks=8, alpha=0.5)

Layout (one method per module; a test file at the same path under ``tests/``):

* ``base.py`` -- the :class:`Weighting` contract and the ``WEIGHTINGS`` registry;
* ``gradients.py`` -- the one per-task-gradient engine (batched ``autograd.grad``, loop fallback,
  ``T x D`` Jacobians, writing an aggregated update into the model);
* ``weightings/`` -- loss weightings (:class:`~mtlrepro.methods.weightings.base.LossWeighting`):
  ``equal`` (alias ``hard_sharing``: plain sum of the task losses), ``scalar`` (fixed weights),
  ``uw`` (alias ``uncertainty``), ``dwa``, ``rlw`` (alias ``rdw``), ``gradnorm``, ``auto_lambda``;
* ``aggregators/`` -- gradient aggregators (:class:`~mtlrepro.methods.aggregators.base.Aggregator`):
  ``mgda_ub`` (Sener & Koltun 2018; Jacobian w.r.t. the shared representation), ``mgda`` (the
  Jacobian of the shared parameters; deliberately *not* an alias of ``mgda_ub``), ``pcgrad``,
  ``cagrad``, ``gradvac``, ``nash_mtl``, ``pareto_mtl``, ``imtl``, and the min-norm solver
  (``min_norm.py``);
* ``logs.py`` -- per-epoch averages of the per-step logs.

Registration is here, as lazy ``"module:attr"`` targets (a method's module is imported when its
name is first built); a new method adds one line below.
"""
from __future__ import annotations

from typing import Any

from mtlrepro.methods.base import WEIGHTINGS, Weighting

__all__ = ["WEIGHTINGS", "Weighting", "build_weighting"]

_W = "mtlrepro.methods.weightings"
_A = "mtlrepro.methods.aggregators"
for _name, _target in {
    "equal": f"{_W}.equal:EqualWeighting",
    "hard_sharing": f"{_W}.equal:EqualWeighting",  # the method name the paper tables use
    "gradnorm": f"{_W}.gradnorm:GradNorm",
    "uw": f"{_W}.uncertainty:UncertaintyWeighting",  # Kendall et al. 2018
    "uncertainty": f"{_W}.uncertainty:UncertaintyWeighting",  # GatedMTL's name
    "dwa": f"{_W}.dwa:DynamicWeightAverage",  # Liu et al. 2019
    "rlw": f"{_W}.random:RandomLossWeighting",  # Lin et al. 2022
    "rdw": f"{_W}.random:RandomLossWeighting",  # GatedMTL's name
    "scalar": f"{_W}.scalar:ScalarWeighting",  # fixed scalarisation (Maninis et al. weights)
    "auto_lambda": f"{_W}.auto_lambda:AutoLambda",  # Liu et al. 2022
    "mgda_ub": f"{_A}.mgda_ub:MGDAUB",
    "mgda": f"{_A}.mgda:MGDA",  # MGDA on the shared parameters; not an alias of mgda_ub
    "pcgrad": f"{_A}.pcgrad:PCGrad",
    "cagrad": f"{_A}.cagrad:CAGrad",
    "gradvac": f"{_A}.gradvac:GradVac",
    "nash_mtl": f"{_A}.nash_mtl:NashMTL",
    "pareto_mtl": f"{_A}.pareto_mtl:ParetoMTL",
    "imtl": f"{_A}.imtl:IMTL",
    "rotograd": "mtlrepro.methods.rotograd:RotoGrad",  # Javaloy & Valera 2022; needs sharing rotograd
    "conal_search": "mtlrepro.search.conal:CoNALSearch",  # CoNAL's bilevel search; needs sharing conal_supernet
    "conal_partial_search": "mtlrepro.search.conal_ablations:CoNALPartialSearch",  # CoNAL Table 4 ablation; sharing ltb_supernet
    "conal_pro_search": "mtlrepro.search.conal_pro:CoNALProSearch",  # CoNAL-Pro's progressive stages; needs sharing conal_pro_supernet
    "bmtas_search": "mtlrepro.search.bmtas:BMTASSearch",  # BMTAS (Bruggemann et al. 2020); needs sharing bmtas_supernet
    "ltb_search": "mtlrepro.search.ltb:LTBSearch",  # LTB's joint Gumbel-softmax search; needs sharing ltb_supernet
    "mtl_nas_search": "mtlrepro.search.mtl_nas:MTLNASSearch",  # MTL-NAS (Gao et al. 2020) single-shot search; needs sharing mtl_nas_supernet
    "tag_affinity": "mtlrepro.search.tag:TAGAffinity",  # Fifty et al. 2021's look-ahead affinity; exports a G-group split
}.items():
    WEIGHTINGS.register(_name, _target)


def build_weighting(name: str, n_tasks: int, **kwargs: Any) -> Weighting:
    """Instantiate the weighting registered as ``name`` for ``n_tasks`` tasks.

    Unknown names raise :class:`mtlrepro.registry.UnknownKeyError` (a ``KeyError``) listing the
    closest registered names; unknown options raise ``TypeError`` naming the method.
    """
    cls = WEIGHTINGS.get(name)
    return cls(n_tasks, **kwargs)
