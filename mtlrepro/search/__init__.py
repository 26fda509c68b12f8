"""Architecture search: the searched architectures, the search split and the search methods.

* ``architecture.py`` -- :class:`BranchedArchitecture`, the tree a search outputs and ``branched``
  retrains (CoNAL's branch points are one form of it);
* ``split.py`` -- the search-train / search-validation split of the training set;
* ``conal.py`` -- CoNAL's bilevel search with conflict noticing (method ``conal_search`` on the
  ``conal_supernet`` model);
* ``tag.py`` + ``grouping.py`` -- TAG's look-ahead inter-task affinity (method ``tag_affinity`` on
  hard sharing) and the best partition into groups, exported as a branched architecture;
* ``bmtas.py`` + ``bmtas_resource.py`` -- BMTAS's resource-aware Gumbel branching search (method
  ``bmtas_search`` on ``bmtas_supernet``) and its expected-FLOPs estimator;
* ``mtl_nas.py`` -- MTL-NAS's single-shot search of cross-task fusion edges (method ``mtl_nas_search``
  on ``mtl_nas_supernet``; its output is an edge set, retrained by ``mtl_nas``);
* ``ltb.py`` -- LTB's joint Gumbel-softmax branching search (method ``ltb_search`` on the
  ``ltb_supernet`` model);

The dependency of a retraining recipe on a search (``architecture_from``) is resolved by
:mod:`mtlrepro.pipeline`.
"""
from .architecture import BranchedArchitecture

__all__ = ["BranchedArchitecture"]
