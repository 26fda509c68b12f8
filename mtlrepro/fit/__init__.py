"""Layout searches: count candidate model layouts and rank them against the published numbers.

Where a paper prints a model's size but not every hyper-parameter behind it, these tools build
each candidate, count it, and rank it by distance to the printed cell; the schemes' defaults are
what they found (the measured gaps are in each scheme's docstring). They read the registry of
published numbers, which is why they live outside ``mtlrepro.models``:

* :func:`~.nlp_layouts.search_nlp_layouts` - ETR-NLP's primitive layout (Table 4's 8.0M);
* :func:`~.table2_layouts.search_table2_layouts` - the conv alternatives of ETR-NLP Table 2.
"""
from .nlp_layouts import search_nlp_layouts
from .table2_layouts import TABLE2_METHODS, search_table2_layouts

__all__ = ["search_nlp_layouts", "search_table2_layouts", "TABLE2_METHODS"]
