r"""RotoGrad's architecture (Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask
Learning", ICLR 2022): hard sharing with one learned rotation of the shared representation per task.

Task ``t``'s head reads :math:`r_t = R_t z` instead of :math:`z` (``decode(z, t) =
head_t(R_t z)``). The rotation acts on dimension 1 of ``z`` (the features of a ``(B, C)`` vector,
the channels of a ``(B, C, H, W)`` map, the same ``R_t`` at every pixel: the authors'
``rotation_shape = C``, ``post_shape = (H, W)``); with ``rotation_size = m < C`` only the first
``m`` channels are rotated and the other ``C - m`` pass through unchanged.

Parametrisation (the authors' code: ``geotorch.orthogonal(..., triv="expm")``, geotorch 0.3):

.. math::
    R_t = B_t \exp\bigl(L_t - L_t^\top\bigr), \qquad L_t = \operatorname{tril}(W_t, -1),

with ``W_t`` an ``m x m`` parameter (started at 0; its diagonal and upper triangle are unused, as
in geotorch, so a rotation counts ``m^2`` parameters) and ``B_t`` a buffer: a Haar-uniform random
rotation (``rotation_init="haar"``, what ``geotorch.orthogonal`` samples; positive determinant) or
the identity (``"identity"``). Every ``R_t`` is in SO(m) by construction.

The forward pass uses ``R_t`` *detached*, as the authors' ``RotateModule`` does: the task losses
never train the rotations. The method ``rotograd`` (:mod:`mtlrepro.methods.rotograd`) trains them
with its own optimizer on its rotation objective; with any other weighting they stay at their
initial value (a fixed orthogonal layer per task).

``rotation_size`` (None = all ``C`` channels): the authors' package always builds the rotation at
the full size of ``rotation_shape``; its ``rotate`` function also handles a matrix smaller than
the representation (rotate the first ``m`` coordinates, keep the rest), which this scheme exposes.
CoNAL's printed counts (57.86M Cityscapes, 75.03M NYUv2 over hard sharing's 55,760,968 /
71,888,721) are hard sharing plus ``T * 1024^2``: ``rotation_size = 1024`` on the 2048-channel
dilated ResNet-50 reproduces them (57,858,120 / 75,034,449); that value is FITTED to the printed
count, not read from CoNAL's code (unpublished). The full 2048-channel rotation gives 64,149,576 /
84,471,633.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..interface import PerTask
from ..registries import SHARING
from .hard_sharing import HardSharing

__all__ = ["RotoGradSharing", "Rotation", "haar_rotation", "ROTATION_INITS"]

ROTATION_INITS = ("haar", "identity")


def haar_rotation(n: int, dtype: torch.dtype | None = None) -> Tensor:
    """A Haar-uniform random matrix of SO(n) from the global torch RNG: QR of a Gaussian matrix
    (drawn in float64), columns signed so that ``diag(r) > 0``, first column negated when the
    determinant is negative (geotorch's ``uniform_init_``); cast to ``dtype`` (None = the default
    dtype, so a model built under ``torch.float64`` has a base orthogonal to float64 precision)."""
    x = torch.randn(n, n, dtype=torch.float64)
    q, r = torch.linalg.qr(x)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype or torch.get_default_dtype())


class Rotation(nn.Module):
    """One task's rotation ``R = base @ expm(tril(W, -1) - tril(W, -1)^T)`` of the first ``size``
    entries of dimension 1 (see the module docstring).

    :meth:`matrix` is ``R`` with its graph (the method's rotation objective differentiates it);
    :meth:`forward` applies a detached ``R``, cached until ``weight`` or ``base`` changes (an
    optimizer step, ``load_state_dict``, ``.to()``), so evaluation computes one matrix
    exponential per task per parameter update, not per batch.
    """

    def __init__(self, size: int, init: str = "haar"):
        super().__init__()
        if init not in ROTATION_INITS:
            raise ValueError(f"rotation init must be one of {ROTATION_INITS}, got {init!r}")
        self.size = int(size)
        self.weight = nn.Parameter(torch.zeros(self.size, self.size))
        self.register_buffer("base", haar_rotation(self.size) if init == "haar" else torch.eye(self.size))
        self._cache: tuple[tuple, Tensor] | None = None

    def matrix(self) -> Tensor:
        """``R`` (``size x size``), differentiable w.r.t. ``weight``."""
        low = self.weight.tril(-1)
        return self.base @ torch.linalg.matrix_exp(low - low.transpose(0, 1))

    def _detached_matrix(self) -> Tensor:
        if torch.is_inference_mode_enabled():
            with torch.no_grad():
                return self.matrix()
        w, b = self.weight, self.base
        key = (w._version, b._version, w.data_ptr(), b.data_ptr(), w.dtype, w.device)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.matrix())
        return self._cache[1]

    def rotate(self, z: Tensor, R: Tensor) -> Tensor:
        """``z`` with its first ``R.shape[0]`` entries of dimension 1 replaced by ``R`` applied to
        them (per sample, per pixel); any rank ``>= 2``."""
        m = R.shape[0]
        if z.dim() < 2 or z.shape[1] < m:
            raise ValueError(f"rotation of size {m} needs z of shape (B, >= {m}, ...), got {tuple(z.shape)}")
        R = R.to(z.dtype)
        if z.shape[1] == m:
            return torch.einsum("ij,bj...->bi...", R, z)
        lo, hi = z[:, :m], z[:, m:]
        return torch.cat([torch.einsum("ij,bj...->bi...", R, lo), hi], dim=1)

    def forward(self, z: Tensor) -> Tensor:
        return self.rotate(z, self._detached_matrix())

    def extra_repr(self) -> str:
        return f"size={self.size}"


@SHARING.register("rotograd")
class RotoGradSharing(HardSharing):
    """Hard sharing whose head ``t`` reads ``R_t z`` (see the module docstring).

    Keyword arguments: ``rotation_size`` (None = ``feature_dim``, every channel; CoNAL's count
    is matched by 1024 on resnet50_dilated), ``rotation_init`` (``"haar"``, the authors' code, or
    ``"identity"``); the rest go to the backbone as for :class:`HardSharing`. The rotations are a
    :class:`~mtlrepro.models.interface.PerTask` (``model.rotations``), so ``task_parameters(t)``
    includes ``R_t``'s parameter and ``shared_parameters()`` does not.
    """

    version = 1

    def __init__(self, backbone: str = "resnet18", out_dims: list[int] | None = None,
                 rotation_size: int | None = None, rotation_init: str = "haar", **backbone_kwargs):
        super().__init__(backbone, out_dims, **backbone_kwargs)
        size = self.feature_dim if rotation_size is None else int(rotation_size)
        if not 1 <= size <= self.feature_dim:
            raise ValueError(f"rotation_size must be in [1, {self.feature_dim}] (the representation's "
                             f"width on {backbone}), got {rotation_size}")
        self.rotation_size = size
        self.rotation_init = rotation_init
        self.rotations = PerTask([Rotation(size, rotation_init) for _ in self.out_dims])

    def decode(self, z: Tensor, task: int) -> Tensor:
        return self.heads[task](self.rotations[task](z))

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError(f"{type(self).__name__} is not task-conditional: call model(x) "
                             f"(returns all tasks) or decode(encode(x), t)")
        z = self.encoder(x)
        return [self.decode(z, t) for t in range(self.n_tasks)]

    def rotation_parameters(self) -> list[nn.Parameter]:
        """The rotations' parameters (``W_t`` of every task), in task order."""
        return [r.weight for r in self.rotations]
