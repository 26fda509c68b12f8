"""Every registered method is runnable as a recipe: the method suite lists each one once."""
from __future__ import annotations

from mtlrepro.methods import WEIGHTINGS
from mtlrepro.recipe import recipe_sets


def test_the_method_suite_has_one_recipe_per_method():
    rs = recipe_sets()["methods/celeba_group8"]
    assert rs.suite is not None and rs.figure is None
    canonical = {WEIGHTINGS.get(n).name for n in WEIGHTINGS.names()}
    assert sorted(r.weighting for r in rs.recipes) == sorted(canonical)
    assert all(r.status == "ready" and r.update == "joint" for r in rs.recipes)
