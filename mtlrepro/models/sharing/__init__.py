"""Sharing schemes: each module registers its MTLModel subclass in ``SHARING``.

Unit-wise (every conv of the backbone becomes the scheme's conv unit): ``hard_sharing``,
``task_routing``, ``max_roaming``, ``attentive``, ``etr``, ``etr_nlp``, ``nlp``, ``conv_alt``.
Stage-wise (read the backbone's stages, :class:`~mtlrepro.models.backbones.StagedBackbone`):
``mtan``, ``cross_stitch``. Independent networks: ``single_task``.
"""
from . import (afa, attentive, conv_alternatives, cross_stitch, etr, etr_nlp, hard_sharing, max_roaming,  # noqa: F401
               mtan, nddr_cnn, single_task, task_routing)  # (each module registers its scheme)
from . import rotograd  # noqa: F401,E402  (RotoGrad's per-task rotations: "rotograd")
from . import branched, conal_supernet  # noqa: F401,E402  (searched trees "branched", CoNAL's search space)
from . import ltb_supernet  # noqa: F401,E402  (LTB's search space "ltb_supernet")
from . import gatedmtl  # noqa: F401,E402  (GatedMTL: "gatedmtl")
from . import tsn  # noqa: F401,E402  (Task Switching Networks: "tsn")
from . import bmtas_supernet  # noqa: F401,E402  (BMTAS's supergraph "bmtas_supernet")
from . import conal_pro_supernet  # noqa: F401,E402  (CoNAL-Pro's progressive search space "conal_pro_supernet")
from . import mtl_nas, mtl_nas_supernet  # noqa: F401,E402  (MTL-NAS: retrained edges "mtl_nas", its supernet "mtl_nas_supernet")
from .afa import AFA
from .attentive import Attentive
from .conv_alternatives import ConvAlternatives
from .cross_stitch import CrossStitch
from .etr import ETR
from .etr_nlp import ETRNLP, NLPNet
from .hard_sharing import HardSharing
from .max_roaming import MaxRoaming
from .mtan import MTAN
from .single_task import SingleTask
from .task_routing import TaskRouting

__all__ = ["HardSharing", "Attentive", "TaskRouting", "MaxRoaming", "ETR", "ETRNLP", "NLPNet",
           "ConvAlternatives", "MTAN", "CrossStitch", "SingleTask", "AFA"]
