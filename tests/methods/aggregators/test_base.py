"""The aggregator contract: the generic backward on toy aggregators whose results are known by hand."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlrepro.methods.aggregators import Aggregator
from mtlrepro.methods.aggregators.mgda_ub import MGDAUB

from ..toy import TinyMTL, make_batch, task_losses


class MeanShared(Aggregator):
    """c_t = 1/T on the shared-parameter Jacobian; heads get their own gradient."""
    name = "toy_mean"

    def coefficients(self, J, losses=None):
        return torch.full((J.shape[0],), 1.0 / J.shape[0], dtype=J.dtype), {}


class MeanSharedWeightedHeads(MeanShared):
    name = "toy_mean_weighted_heads"
    task_gradient_scale = "weights"


class MeanRepresentation(MeanShared):
    name = "toy_mean_z"
    jacobian_of = "representation"


class ElementwiseMax(Aggregator):
    """Not a combination of the rows: the update is max_t J[t, d]."""
    name = "toy_max"
    linear = False

    def aggregate(self, J, losses=None):
        return J.max(dim=0).values


def _setup(T=3):
    torch.manual_seed(0)
    model = TinyMTL(T).double()
    x, y = make_batch(T)
    return model, x.double(), y.double()


def _reference_grads(model, x, y, shared_objective, head_objective):
    """Plain autograd: shared parameters from one objective, heads from another."""
    ref = copy.deepcopy(model)
    losses, _ = task_losses(ref, x, y)
    shared = torch.autograd.grad(shared_objective(losses), ref.shared_parameters(), retain_graph=True)
    heads = torch.autograd.grad(head_objective(losses), [p for h in ref.heads for p in h.parameters()])
    return list(shared), list(heads)


def _model_grads(model):
    return [p.grad for p in model.shared_parameters()], [p.grad for h in model.heads for p in h.parameters()]


def _assert_all_close(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cls,head_objective", [
    (MeanShared, lambda L: L.sum()),                      # own task's gradient
    (MeanSharedWeightedHeads, lambda L: L.mean()),        # c_t * own gradient
    (MeanRepresentation, lambda L: L.sum()),
])
def test_linear_aggregator_backward(cls, head_objective):
    T = 3
    model, x, y = _setup(T)
    shared_ref, heads_ref = _reference_grads(model, x, y, lambda L: L.mean(), head_objective)
    agg = cls(T)
    losses, z = task_losses(model, x, y)
    logs = agg.backward(losses, model, z=z)
    shared, heads = _model_grads(model)
    _assert_all_close(shared, shared_ref)
    _assert_all_close(heads, heads_ref)
    torch.testing.assert_close(logs["task_weights"], torch.full((T,), 1 / T, dtype=torch.float64))
    torch.testing.assert_close(logs["total_loss"], losses.detach().mean())
    assert agg.last_used_batched is True


def test_non_linear_aggregator_writes_its_update_and_logs_nan_weights():
    T = 3
    model, x, y = _setup(T)
    ref = copy.deepcopy(model)
    ref_losses, _ = task_losses(ref, x, y)
    per_task = [torch.cat([g.flatten() for g in torch.autograd.grad(ref_losses[t], ref.shared_parameters(),
                                                                     retain_graph=True)]) for t in range(T)]
    want = torch.stack(per_task).max(dim=0).values
    losses, _ = task_losses(model, x, y)
    logs = ElementwiseMax(T).backward(losses, model)
    got = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert all(math.isnan(v) for v in logs["task_weights"].tolist())


def test_aggregate_is_pure_and_equals_coefficients_times_jacobian():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # orthonormal: MGDA gives the centroid
    agg = MGDAUB(2, normalization="none")
    torch.testing.assert_close(agg.aggregate(J), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(MeanShared(2).aggregate(J), J.mean(0))
    with pytest.raises(ValueError, match="needs the losses"):
        MGDAUB(2, normalization="loss+").aggregate(J)


def test_needs_follow_jacobian_of_and_bad_declarations_fail():
    assert MeanShared.needs_shared_jacobian and not MeanShared.needs_representation
    assert MeanRepresentation.needs_representation and not MeanRepresentation.needs_shared_jacobian
    assert MGDAUB.needs_representation and not MGDAUB.needs_shared_jacobian
    assert not MeanShared.separable and not MGDAUB.separable
    with pytest.raises(TypeError, match="jacobian_of"):
        type("Bad", (Aggregator,), {"jacobian_of": "heads"})
    with pytest.raises(TypeError, match="linear"):
        type("Bad", (Aggregator,), {"linear": False, "task_gradient_scale": "weights"})


def test_representation_aggregator_requires_z_and_shared_one_requires_a_model():
    T = 2
    model, x, y = _setup(T)
    losses, _ = task_losses(model, x, y)
    with pytest.raises(ValueError, match="needs z"):
        MeanRepresentation(T).backward(losses, model)
    with pytest.raises(ValueError, match="shared_parameters"):
        MeanShared(T).backward(losses, None)
