"""Gradient aggregators: a ``T x D`` Jacobian of the task losses in, one update out (see ``base``)."""
from mtlrepro.methods.aggregators.base import Aggregator

__all__ = ["Aggregator"]
