"""SkySense's pretraining objective: L = L_MGCL + λ L_CMA, plus the geo bank update.

L_MGCL = Σ_{HR, S2, S1} L_FGCL(F_i, F'_i) + w_fused L_FGCL(F_fus, F'_fus), with
L_FGCL = w_pix L_pix + w_obj L_obj + w_img L_img (SKYSENSE_SPEC.md §9), each level a DINO
self-distillation between the student on one view and the EMA teacher on the other view,
both directions averaged:

* pixel: the teacher's features are moved onto the student view's grid (crops overlap
  partly; rotations/flips undone) and every overlapping pixel of every acquisition valid in
  both views is a pair — the paper's 1/(N_S T_i) Σ_s Σ_t;
* object: the teacher's pixels are grouped with the Sinkhorn op (``losses.object_assign``),
  the same groups pool both views' overlapping pixels, each object weighted by its mass;
* image: each view's whole crop average-pooled per acquisition.

Heads: one DINO head per level for the per-modality maps (HR/S2/S1 share the stage-3
width) and one per level for the fused features; the teacher's outputs are centred with
one running centre per (source, level) (DINO; all-reduced under data parallelism), or
balanced by the Sinkhorn op (``loss.centering: sinkhorn``, DINOv2).
L_CMA: InfoNCE between the student's HR, S2 (mean over its valid acquisitions) and S1
features of the same pixel, through one linear projection per modality, all three pairs.

On a subset of the modalities (``data.modalities``: HR only, S2 + S1, ...) the objectives that
apply remain: distillation of the present modalities and of the fused map, alignment of the
present pairs (none with one modality).
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import InputError
from ..models import SkySense
from .augment import align, to_canonical
from .config import LossSection
from .losses import DINOHead, distill_loss, info_nce, object_assign, object_pool
from .prototypes import update_bank

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

SOURCES = ("hr", "s2", "s1", "fused")
LEVELS = ("pixel", "object", "image")
MODEL_INPUTS = ("hr", "s2", "s1", "doy_s2", "doy_s1", "valid_s2", "valid_s1")


class SkySensePretrainer(nn.Module):
    """The student: the SkySense backbone plus the pretraining heads and running centres."""

    centers_started: Tensor   # a buffer, as are the centres center_<source>_<level>

    def __init__(self, backbone: SkySense, loss: LossSection, modalities: tuple[str, ...] = ("hr", "s2", "s1")):
        super().__init__()
        self.backbone, self.loss_cfg = backbone, loss
        self.modalities = tuple(m for m in ("hr", "s2", "s1") if m in modalities)
        self.sources = (*self.modalities, "fused")   # what is distilled; cross-modal pairs need two modalities
        widths = {"modal": backbone.config.hr_out_dim, "fused": backbone.config.fusion_dim}
        self.heads = nn.ModuleDict({f"{kind}_{level}": DINOHead(width, loss.out_dim, loss.head_hidden,
                                                                loss.head_bottleneck)
                                    for kind, width in widths.items() for level in LEVELS})
        paired = self.modalities if len(self.modalities) > 1 else ()
        self.cma = nn.ModuleDict({m: nn.Linear(widths["modal"], loss.cma_dim) for m in paired})
        for src in SOURCES:
            for level in LEVELS:
                self.register_buffer(f"center_{src}_{level}", torch.zeros(loss.out_dim))
        # the centres start as the first batch's mean, not 0: from 0 the loss first climbs
        # while the centre catches up, which hides the learning of short runs
        self.register_buffer("centers_started", torch.zeros((), dtype=torch.bool))

    def head(self, src: str, level: str) -> DINOHead:
        return cast(DINOHead, self.heads[f"{'fused' if src == 'fused' else 'modal'}_{level}"])

    def features(self, view: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.backbone(**{k: view[k] for k in MODEL_INPUTS if k in view})

    def forward(self, views: list[dict[str, Tensor]], geoms: list[Tensor] | None = None,
                teacher: SkySensePretrainer | None = None, teacher_temp: float = 0.04,
                generator: torch.Generator | None = None):
        """With a teacher: :func:`pretrain_losses` (the training step's forward). Without: the
        backbone's outputs per view. Everything runs inside this call so that FSDP2's root
        hooks gather the parameters that live outside the sharded blocks."""
        if teacher is None:
            return [self.features(v) for v in views]
        if geoms is None:
            raise InputError("SkySensePretrainer: the views' geoms are required with a teacher")
        return pretrain_losses(self, teacher, views, geoms, teacher_temp, generator)


def make_teacher(student: SkySensePretrainer) -> SkySensePretrainer:
    """A frozen copy; its prototype bank is dropped (the student's is the one kept)."""
    teacher = copy.deepcopy(student)
    teacher.backbone.geo = None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _frames(x: Tensor) -> Tensor:
    """Per-modality map as (B, T, C, c, c): single-frame maps get T = 1."""
    return x if x.dim() == 5 else x[:, None]


def _tokens(x: Tensor) -> Tensor:
    """(B, T, C, c, c) -> (B, T, c, c, C)."""
    return x.permute(0, 1, 3, 4, 2)


class _Centers:
    """Teacher output sums per (source, level), reduced over ranks, folded into the buffers."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def add(self, name: str, logits: Tensor, weight: Tensor | None = None) -> None:
        w = torch.ones(logits.shape[0], device=logits.device) if weight is None else weight.float()
        s = (logits.detach().float() * w[:, None]).sum(0)
        self.sums[name] = self.sums.get(name, 0) + s
        self.counts[name] = self.counts.get(name, 0) + w.sum()

    @torch.no_grad()
    def update(self, module: SkySensePretrainer, momentum: float) -> None:
        names = sorted(self.sums)
        if not names:
            return
        flat = torch.cat([torch.cat([self.sums[n], self.counts[n].reshape(1)]) for n in names])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
        m = momentum if bool(module.centers_started) else 0.0
        for n, chunk in zip(names, flat.split([self.sums[n].numel() + 1 for n in names]), strict=True):
            if chunk[-1] > 0:
                buf = getattr(module, n)
                buf.mul_(m).add_(chunk[:-1] / chunk[-1], alpha=1 - m)
        module.centers_started.fill_(True)


def pixel_subset(ok: Tensor, index: Tensor, salt: float, k: int) -> Tensor:
    """At most ``k`` of each sample's True entries of ``ok`` (B, ...), picked at random.

    The pick depends only on the sample's global ``index`` (B,), the entry's position and
    ``salt`` (one draw per step, the same on every rank), never on the batch's make-up: a
    data-parallel run picks what a single process would.
    """
    B = ok.shape[0]
    flat = ok.reshape(B, -1)
    if k <= 0 or int(flat.sum(1).max()) <= k:
        return ok
    pos = torch.arange(flat.shape[1], device=ok.device, dtype=torch.float64)
    x = index.to(ok.device, torch.float64)[:, None] * 12.9898 + pos[None] * 78.233 + salt * 37.719
    priority = torch.frac(torch.sin(x) * 43758.5453).abs()        # a fixed hash, uniform on [0, 1)
    priority = priority.masked_fill(~flat, -1.0)
    kth = priority.topk(k, dim=1).values[:, -1:]
    return (flat & (priority >= kth)).reshape(ok.shape)


def _pair_losses(student: SkySensePretrainer, teacher: SkySensePretrainer, s_feat: Tensor, t_feat: Tensor,
                 s_geom: Tensor, t_geom: Tensor, frames_ok: Tensor, src: str, cfg: LossSection, teacher_temp: float,
                 centers: _Centers, index: Tensor, salt: float) -> dict[str, Tensor]:
    """Pixel, object and image losses of one (student view, teacher view) pair for one source."""
    S = to_canonical(_frames(s_feat), s_geom)                  # (B, T, C, c, c)
    Tc = to_canonical(_frames(t_feat), t_geom)
    B, T, _, c, _ = S.shape
    Ta, overlap = align(Tc, t_geom, s_geom)                    # teacher on the student's grid
    pix_ok = overlap[:, None] & frames_ok[:, :, None, None]    # (B, T, c, c)
    out: dict[str, Tensor] = {}
    def st(level, x):
        return student.head(src, level)(x)

    def te(level, x):
        return teacher.head(src, level)(x)

    def ctr(level):
        return getattr(student, f"center_{src}_{level}")

    dl = functools.partial(distill_loss, student_temp=cfg.student_temp, teacher_temp=teacher_temp,
                           centering=cfg.centering, sinkhorn_iters=cfg.sinkhorn_iters, num_samples=B)
    # pixel level (optionally on a random subset of the pairs: loss.pixel_samples per sample)
    sel = pixel_subset(pix_ok, index, salt, cfg.pixel_samples)
    s_tok, t_tok = _tokens(S)[sel], _tokens(Ta)[sel]
    t_logits = te("pixel", t_tok)
    out["pixel"] = dl(st("pixel", s_tok), t_logits, ctr("pixel"), sample=sel.nonzero()[:, 0])
    centers.add(f"center_{src}_pixel", t_logits)
    # object level: groups from the teacher's own crop, moved onto the student's grid
    Q = object_assign(Tc.flatten(0, 1), cfg.object_grid, cfg.object_epsilon, cfg.sinkhorn_iters)  # (BT, c c, K)
    K = Q.shape[-1]
    Qa, _ = align(Q.transpose(1, 2).reshape(B, T, K, c, c), t_geom, s_geom)
    Qa = Qa.reshape(B * T, K, c * c).transpose(1, 2)
    m = pix_ok.reshape(B * T, c * c)
    s_obj, mass = object_pool(S.flatten(0, 1).flatten(2), Qa, m)
    t_obj, _ = object_pool(Ta.flatten(0, 1).flatten(2), Qa, m)
    keep = mass > 1e-3
    t_logits = te("object", t_obj[keep])
    out["object"] = dl(st("object", s_obj[keep]), t_logits, ctr("object"), weight=mass[keep],
                       sample=keep.nonzero()[:, 0] // T)
    centers.add(f"center_{src}_object", t_logits, mass[keep])
    # image level: each view's own crop, pooled per acquisition
    out["image"], t_logits = _image_level(student, teacher, S, Tc, frames_ok, src, cfg, teacher_temp)
    centers.add(f"center_{src}_image", t_logits)
    return out


def _frames_ok(src: str, a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """(B, T) acquisitions valid in both views; (B, 1) all True for single-frame sources."""
    if src in ("s2", "s1"):
        return a[f"valid_{src}"] & b[f"valid_{src}"]
    return torch.ones(a["latlon"].shape[0], 1, dtype=torch.bool, device=a["latlon"].device)


def _image_level(student: SkySensePretrainer, teacher: SkySensePretrainer, S: Tensor, Tt: Tensor, ok: Tensor,
                 src: str, cfg: LossSection, teacher_temp: float) -> tuple[Tensor, Tensor]:
    """Image level: student and teacher maps (B, T, C, h, w), any crop sizes (pooling needs no
    alignment), on the acquisitions ``ok`` (B, T). Returns (loss, teacher logits)."""
    t_logits = teacher.head(src, "image")(Tt.mean((-2, -1))[ok])
    loss = distill_loss(student.head(src, "image")(S.mean((-2, -1))[ok]), t_logits,
                        getattr(student, f"center_{src}_image"),
                        cfg.student_temp, teacher_temp, sample=ok.nonzero()[:, 0], num_samples=S.shape[0],
                        centering=cfg.centering, sinkhorn_iters=cfg.sinkhorn_iters)
    return loss, t_logits


def _series_mean(x: Tensor, valid: Tensor) -> Tensor:
    """(B, T, C, c, c) mean over the valid acquisitions -> (B, C, c, c)."""
    w = valid.to(x.dtype)[:, :, None, None, None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


def cross_modal_loss(student: SkySensePretrainer, out: dict[str, Tensor], view: dict[str, Tensor], cfg: LossSection,
                     generator: torch.Generator | None) -> Tensor:
    """InfoNCE over the pairs of the trained modalities at up to ``cma_max_pixels`` pixels of
    each image; 0 with a single modality (there is nothing to align)."""
    present = tuple(student.cma.keys())
    if len(present) < 2:
        return out["fused"].new_zeros(())
    maps = {m: out["hr"] if m == "hr" else _series_mean(out[m], view[f"valid_{m}"]) for m in present}
    first = maps[present[0]]
    h, w = first.shape[-2:]
    n = min(h * w, cfg.cma_max_pixels)
    pick = torch.randperm(h * w, generator=generator)[:n].to(first.device)
    z = {k: student.cma[k](v.flatten(2)[:, :, pick].transpose(1, 2)) for k, v in maps.items()}
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    return cast(Tensor, sum(info_nce(z[a], z[b], cfg.cma_temp) for a, b in pairs)) / len(pairs)   # a sum of tensors


def pretrain_losses(student: SkySensePretrainer, teacher: SkySensePretrainer, views: list[dict[str, Tensor]],
                    geoms: list[Tensor], teacher_temp: float,
                    generator: torch.Generator | None) -> dict[str, Tensor]:
    """All losses of one step on two views: ``total`` plus each part (for logging).

    Also folds the teacher statistics into the centres and updates the geo prototype bank
    (both without gradient), so call it once per optimiser step. Under FSDP2 call it as
    ``student(views, geoms, teacher, teacher_temp, generator)``.
    """
    cfg = student.loss_cfg
    views, locals_ = views[:2], views[2:]                 # global views, then local ones (student only)
    s_out = [student.features(v) for v in views]
    s_loc = [student.features(v) for v in locals_]
    with torch.no_grad():
        t_out = teacher(views)
    centers = _Centers()
    parts: dict[str, Tensor] = {}
    pairs = [(0, 1), (1, 0)]
    B = views[0]["latlon"].shape[0]
    index = views[0].get("index", torch.arange(B))          # global sample ids (step_views sets them)
    salt = float(torch.rand((), generator=generator)) if cfg.pixel_samples else 0.0
    for n_src, src in enumerate(student.sources):
        acc: dict[str, Tensor | float] = {level: 0.0 for level in LEVELS}   # tensors once the pairs are added
        for i, j in pairs:
            res = _pair_losses(student, teacher, s_out[i][src], t_out[j][src], geoms[i], geoms[j],
                               _frames_ok(src, views[i], views[j]), src, cfg,
                               teacher_temp, centers, index, salt + n_src + 0.5 * i)
            for level in LEVELS:
                acc[level] = acc[level] + res[level]
        # multi-crop: each local view against both global teacher views, at image level
        n_img = len(pairs)
        for lv, lout in zip(locals_, s_loc, strict=True):
            for j in range(2):
                loss, _ = _image_level(student, teacher, _frames(lout[src]), _frames(t_out[j][src]),
                                       _frames_ok(src, lv, views[j]), src, cfg, teacher_temp)
                acc["image"] = acc["image"] + loss
                n_img += 1
        for level in LEVELS:
            parts[f"{src}_{level}"] = cast(Tensor, acc[level]) / (n_img if level == "image" else len(pairs))
    weights = {"pixel": cfg.pixel_weight, "object": cfg.object_weight, "image": cfg.image_weight}
    mgcl = cast(Tensor, sum((cfg.fused_weight if src == "fused" else 1.0) * weights[level] * parts[f"{src}_{level}"]
                            for src in student.sources for level in LEVELS))   # sums of tensors, as below
    cma = cast(Tensor, sum(cross_modal_loss(student, s_out[i], views[i], cfg, generator)
                           for i in range(len(views)))) / len(views)
    parts["mgcl"], parts["cma"] = mgcl, cma
    parts["total"] = mgcl + cfg.cma_weight * cma
    centers.update(student, cfg.center_momentum)
    geo = student.backbone.geo
    assert geo is not None   # the student keeps its bank (a teacher's is dropped)
    for i, v in enumerate(views):
        update_bank(geo.prototypes, t_out[i]["fused"], v["latlon"], cfg.geo_momentum,
                    cfg.geo_epsilon, cfg.sinkhorn_iters)
    return parts


@torch.no_grad()
def ema_update(teacher: SkySensePretrainer, student: SkySensePretrainer, momentum: float) -> None:
    """teacher <- momentum teacher + (1 - momentum) student, parameter by parameter (works on
    FSDP2 shards: both are sharded alike, so the local tensors line up)."""
    for m in (teacher, student):
        if hasattr(m, "reshard"):  # FSDP2 keeps a root's parameters gathered after a forward without
            cast("FSDPModule", m).reshard()   # backward (the teacher's): shard them again first
    t = [p.to_local() if hasattr(p, "to_local") else p for p in teacher.parameters()]
    s = [p.to_local() if hasattr(p, "to_local") else p for p in student.parameters()]
    if len(t) != len(s):
        raise RuntimeError("ema_update: teacher and student have different parameters")
    torch._foreach_lerp_(t, [x.detach() for x in s], 1 - momentum)
