r"""Vandenhende et al.'s training augmentation, batched on the device (GatedMTL Appendix A.2).

What ``SimonVandenhende/Multi-Task-Learning-PyTorch`` does to every training sample
(``utils/common_config.py`` ``get_transformations`` L158-182; transforms in ``data/custom_transforms.py``):

1. ``RandomHorizontalFlip`` (L174-191): with probability 0.5 ``cv2.flip`` of every map, then the
   normals' x component negated (L188-189).
2. ``ScaleNRotate`` (L18-82) - PASCAL-Context ``rots=(-20, 20), scales=(.75, 1.25)``, NYUD
   ``rots=[0], scales=[1.0, 1.2, 1.5]`` (common_config L163, L171). One draw per sample: a tuple
   gives :math:`\theta = \Delta U - \Delta/2`, :math:`s = \Delta' U' - \Delta'/2 + 1` (L37-41; the
   range's centre is not used - the same as uniform on the range for these symmetric ones); a list
   one of its values (L44-45, numpy ``randint`` high-exclusive). Every map:
   ``cv2.warpAffine(x, cv2.getRotationMatrix2D((w/2, h/2), θ, s), (w, h), flags)`` (L54-75), i.e.
   :math:`\mathrm{dst}(p) = \mathrm{src}(M^{-1} p)` with OpenCV's default constant border 0. The flags are
   ``FLAGVALS`` (``utils/config.py`` L26/L119, L39, L48, L57, L66, L76, L87): **cubic for the image**
   and the normals, nearest for semseg, human parts, saliency, edges and depth. The normals are
   rotated in-plane before the warp (L67-73): :math:`\phi = \operatorname{atan2}(n_x, n_y)`,
   :math:`(n_x, n_y) \leftarrow r(\sin(\phi+\theta), \cos(\phi+\theta))`, computed here as
   :math:`(n_x\cos\theta + n_y\sin\theta,\ n_y\cos\theta - n_x\sin\theta)`. Depth is divided by
   :math:`s` after the warp (L77-78).
3. ``FixedResize`` to ``TRAIN.SCALE`` (L88-138): the identity here, the cache already holds the
   training size (smoke runs at a smaller size augment that size: the warp is the same map in
   relative coordinates); its renormalisation of the normals, :math:`n/(\lVert n\rVert + \epsilon)`
   (L131-134), is applied to the warped ones. ``AddIgnoreRegions`` (L243-268): zero-norm normals,
   depth 0 and all-zero human-part maps become ignore (255). ImageNet normalisation: ``prepare``.

The border (the repo's value 0, read in each map's encoding; project encodings in
:mod:`mtlrepro.data.nyud_mt` / :mod:`mtlrepro.data.pascal_mt`):

* image: black; edges and saliency: 0, as the repo;
* depth: 0 -> ignore, normals: zero norm -> ignore (AddIgnoreRegions), as the repo;
* human parts: background 0, and a map left with no part pixel (no person, or every part pushed
  out) becomes all -1 = ignore - ``AddIgnoreRegions`` runs after the warp, as here;
* PASCAL semseg: the repo's 0 is **background** (``_load_semseg`` keeps the PNG's values, L334-337
  of ``data/pascal_context.py``), so its rotated-in corners train as class 0. Kept, for fidelity;
* NYUD semseg: ``data/nyud.py`` L196-201 shifts labels *before* the transforms (0 -> 255, k -> k-1),
  so the repo's border would be class 0 ("wall"). With NYUD's settings no border ever appears
  (no rotation, s >= 1 about the centre: every source position lies inside the image); here a
  border, possible only with other settings, is -1 = ignore (a deviation that never fires).

Batched: the inverse of each sample's 2x3 matrix becomes an ``F.affine_grid`` theta
(``align_corners=False``; OpenCV's pixel centres are integers, normalised
:math:`u = (2x+1)/w - 1`), one ``grid_sample`` for the bicubic maps (image + normals) and one for
the nearest ones (labels shifted so that the zero padding lands on their border value), only over
the samples whose draw is not the identity (those stay bit-exact, as ``warpAffine`` keeps them).
A flip before a warp is folded into its theta (the source's :math:`u \to -u`); flipped samples
with an identity draw are flipped exactly.
Draws come from the CPU generator ``train_batches`` seeds by (seed, epoch, step). Not bit-identical
to OpenCV: the cubic kernels agree (Keys, a = -0.75) but OpenCV interpolates on a 1/32-pixel
table, and the repo's ``astype(np.uint8)`` (ToTensor L295) truncates and wraps the cubic overshoot
where this rounds and clamps to 0..255; nearest
ties at exact half-pixel sources (every sixth column at s = 1.2) may go either way (OpenCV: 1/1024
pixel fixed point; torch: round half to even).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["VandenhendeAugment", "augment_for", "rotation_matrices", "affine_theta", "draw", "SETTINGS",
           "KINDS", "describe"]

#: dataset -> (rots, scales) of ``get_transformations``; a tuple is a range, a list a set to choose from
SETTINGS: dict[str, tuple] = {
    "pascal_mt": ((-20.0, 20.0), (0.75, 1.25)),
    "nyud_mt": ([0.0], [1.0, 1.2, 1.5]),
}
#: target kind -> (grid_sample mode, border value in this project's encoding)
KINDS: dict[str, tuple[str, float]] = {
    "semseg_nyud": ("nearest", -1.0), "semseg_pascal": ("nearest", 0.0), "human_parts": ("nearest", 0.0),
    "depth": ("nearest", 0.0), "normals": ("bicubic", 0.0), "edge": ("nearest", 0.0), "saliency": ("nearest", 0.0),
}
_EPS = float(torch.finfo(torch.float32).eps)   # FixedResize's np.finfo(np.float32).eps


def draw(spec: tuple | list, n: int, g: torch.Generator, centre: float) -> torch.Tensor:
    """ScaleNRotate's draw for ``n`` samples (float64): tuple -> width U - width/2 + centre, list -> a value."""
    if isinstance(spec, tuple):
        width = float(spec[1]) - float(spec[0])
        return width * torch.rand(n, generator=g, dtype=torch.float64) - width / 2 + centre
    values = torch.tensor([float(v) for v in spec], dtype=torch.float64)
    return values[torch.randint(len(values), (n,), generator=g)]


def rotation_matrices(angle_deg: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``cv2.getRotationMatrix2D((w/2, h/2), angle, scale)`` per sample: (B, 2, 3), source -> destination
    pixels, :math:`[[a, b, (1-a)c_x - b c_y], [-b, a, b c_x + (1-a) c_y]]`, a = s cos, b = s sin."""
    a = scale * torch.cos(torch.deg2rad(angle_deg))
    b = scale * torch.sin(torch.deg2rad(angle_deg))
    cx, cy = w / 2.0, h / 2.0
    row0 = torch.stack([a, b, (1 - a) * cx - b * cy], dim=-1)
    row1 = torch.stack([-b, a, b * cx + (1 - a) * cy], dim=-1)
    return torch.stack([row0, row1], dim=1)


def affine_theta(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid`` theta (align_corners=False) of ``warpAffine(src, m)``: :math:`N M^{-1} N^{-1}` with
    N the pixel -> normalised map :math:`(x, y) \\mapsto ((2x+1)/w - 1, (2y+1)/h - 1)`. (B, 2, 3) float64."""
    full = torch.zeros(m.shape[0], 3, 3, dtype=torch.float64)
    full[:, :2] = m.to(torch.float64)
    full[:, 2, 2] = 1
    norm = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    return (norm @ torch.linalg.inv(full) @ torch.linalg.inv(norm))[:, :2]


def _rotate_normals(n: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """The repo's in-plane rotation (custom_transforms L67-73) of (B, 3, H, W) normals by each sample's angle."""
    th = torch.deg2rad(angle_deg).view(-1, 1, 1)
    c, s = torch.cos(th), torch.sin(th)
    return torch.stack([n[:, 0] * c + n[:, 1] * s, n[:, 1] * c - n[:, 0] * s, n[:, 2]], dim=1)


@dataclass
class VandenhendeAugment:
    """``augment(images, targets, generator)`` on one batch of stored tensors: uint8 (B, 3, H, W) images,
    targets in the cache's dtypes and shapes (see the module docstring); returns the same kinds."""

    kinds: Sequence[str]            # per target: a key of KINDS
    rots: tuple | list
    scales: tuple | list
    flip: bool = True

    def __call__(self, images: torch.Tensor, targets: list[torch.Tensor],
                 g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n, _, h, w = images.shape
        dev = images.device
        targets = list(targets)
        f = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        angle, scale = draw(self.rots, n, g, 0.0), draw(self.scales, n, g, 1.0)
        moved_mask = (angle != 0) | (scale != 1)
        still = (f & ~moved_mask).nonzero()[:, 0]
        if len(still):   # flipped samples that ScaleNRotate leaves alone: an exact flip
            j = still.to(dev)
            images = images.index_copy(0, j, images[j].flip(-1))
            for i, (kind, y) in enumerate(zip(self.kinds, targets)):
                fy = y[j].flip(-1)
                if kind == "normals":
                    fy[:, 0].neg_()
                targets[i] = y.index_copy(0, j, fy)
        moved = moved_mask.nonzero()[:, 0]
        if len(moved) == 0:
            return images, targets
        m, idx = len(moved), moved.to(dev)
        take = (lambda t: t) if m == n else (lambda t: t[idx])
        put = (lambda t, v: v) if m == n else (lambda t, v: t.index_copy(0, idx, v))
        angle, scale, sign = angle[moved], scale[moved], torch.where(f[moved], -1.0, 1.0).to(torch.float64)
        theta = affine_theta(rotation_matrices(angle, scale, h, w), h, w)
        theta[:, 0] *= sign.view(-1, 1)   # a flip first: the source's u -> -u (align_corners=False)
        grid = F.affine_grid(theta.to(dev, torch.float32), [m, 1, h, w], align_corners=False)

        # bicubic: the image and the normals (x negated if flipped, rotated in-plane) in one call
        ni = next((i for i, k in enumerate(self.kinds) if k == "normals"), None)
        buf = torch.empty(m, 3 if ni is None else 6, h, w, device=dev)
        buf[:, :3].copy_(take(images))
        if ni is not None:
            nrm = take(targets[ni]).float()
            nrm[:, 0] *= sign.to(dev, torch.float32).view(-1, 1, 1)
            buf[:, 3:] = _rotate_normals(nrm, angle.to(dev, torch.float32))
        out = F.grid_sample(buf, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
        images = put(images, out[:, :3].round_().clamp_(0, 255).to(images.dtype))
        if ni is not None:
            nrm = out[:, 3:]   # FixedResize's renormalisation (norm(dim=1) is slow on CPU)
            nrm = nrm / ((nrm[:, :1] ** 2 + nrm[:, 1:2] ** 2 + nrm[:, 2:] ** 2).sqrt_() + _EPS)
            targets[ni] = put(targets[ni], nrm.to(targets[ni].dtype))

        # nearest: every other map in one call, shifted so that the zero padding is its border value
        near = [i for i, k in enumerate(self.kinds) if k != "normals"]
        if not near:
            return images, targets
        chans = [targets[i].shape[1] if targets[i].dim() == 4 else 1 for i in near]
        buf = torch.empty(m, sum(chans), h, w, device=dev)
        c = 0
        for i, k in zip(near, chans):
            buf[:, c:c + k].copy_(take(targets[i]).view(m, k, h, w))
            if KINDS[self.kinds[i]][1]:
                buf[:, c:c + k] -= KINDS[self.kinds[i]][1]
            c += k
        out = F.grid_sample(buf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        c = 0
        for i, k in zip(near, chans):
            kind, y = self.kinds[i], targets[i]
            o = out[:, c:c + k] + KINDS[kind][1]
            c += k
            if kind == "depth":
                o = o / scale.to(dev, torch.float32).view(-1, 1, 1, 1)
            else:
                o = o.round_()
            if kind == "human_parts":   # AddIgnoreRegions: a map with no part pixel left is ignore
                none = ~o.flatten(1).gt(0).any(1)
                o = torch.where(none.view(-1, 1, 1, 1), torch.full_like(o, -1.0), o)
            targets[i] = put(y, o.to(y.dtype).view(y[:m].shape))
        return images, targets


def augment_for(dataset: str, task_names: Sequence[str]) -> VandenhendeAugment:
    """The augmentation of ``dataset`` ("nyud_mt" | "pascal_mt") for targets of ``task_names``."""
    rots, scales = SETTINGS[dataset]
    kinds = []
    for t in task_names:
        if t == "semseg":
            kinds.append("semseg_nyud" if dataset == "nyud_mt" else "semseg_pascal")
        elif t in KINDS:
            kinds.append(t)
        else:
            raise ValueError(f"no Vandenhende augmentation rule for target {t!r}")
    return VandenhendeAugment(kinds, rots, scales)


def describe(dataset: str) -> str:
    """The exact text of ``data_info["augmentation"]``."""
    rots, scales = SETTINGS[dataset]
    if isinstance(rots, tuple):
        sr = f"rotation uniform in [{rots[0]:g}, {rots[1]:g}] deg, scale uniform in [{scales[0]:g}, {scales[1]:g}]"
    else:
        sr = (f"rotation one of {{{', '.join(f'{r:g}' for r in rots)}}} deg, scale one of "
              f"{{{', '.join(f'{s:g}' for s in scales)}}}")
    return ("Vandenhende's (Multi-Task-Learning-PyTorch get_transformations), on the device per batch: "
            "horizontal flip p=0.5 (normals' x negated); ScaleNRotate per sample, " + sr + ", "
            "cv2.getRotationMatrix2D about (w/2, h/2), bicubic image and normals (rotated in-plane, "
            "renormalised), nearest labels / depth / edges / saliency, depth divided by the scale, "
            "border 0 (-> ignore for depth, normals, empty human-part maps; background for PASCAL semseg); "
            "FixedResize is the identity (cached at the training size)")
