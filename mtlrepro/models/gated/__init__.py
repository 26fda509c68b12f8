"""GatedMTL's pieces: gates and sparsity (:mod:`.gates`), the gated conv unit (:mod:`.unit`),
pruning (:mod:`.prune`), gates as data and Figure 3's patterns (:mod:`.patterns`). The model is
:mod:`mtlrepro.models.sharing.gatedmtl`."""
