"""AdamW with layer-wise learning-rate decay, warmup + cosine schedules.

Layer-wise decay (BEiT / DINOv2): within each encoder, block i of n gets lr x
decay ** (n - i), its embeddings decay ** n; everything after the encoders (UPHeads, date
table, fusion, pretraining heads) gets the full rate. Each encoder decays over its own
depth: the Swin's 24 blocks and a ViT's 24 layers both span decay ** 24 .. decay.
No weight decay on biases, norms, tokens, position embeddings and the date table (1-D
parameters and the named embeddings), as in DINO/DINOv2.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

_NO_DECAY = ("cls_token", "pos_embed", "ctpe", "mask_token")


def _swin_block_ids(model: nn.Module) -> dict[str, int]:
    """'hr.stages.s.blocks.b' -> 1-based block number over the whole Swin, and the count."""
    ids, n = {}, 0
    for s, stage in enumerate(model.backbone.hr.stages):
        for b in range(len(stage.blocks)):
            n += 1
            ids[f"{s}.{b}"] = n
    return ids


def layer_of(name: str, swin_ids: dict[str, int], vit_depth: int) -> tuple[str, int, int] | None:
    """(encoder, layer id, depth) for a parameter of an encoder, else None (full rate)."""
    n_swin = len(swin_ids)
    if name.startswith("backbone.hr."):
        m = re.match(r"backbone\.hr\.stages\.(\d+)\.(blocks\.(\d+)|downsample)", name)
        if m is None:
            # patch embedding -> 0; output norms / norm3 after the last block -> top
            return ("hr", 0 if ".patch_embed." in name else n_swin, n_swin)
        s = int(m.group(1))
        if m.group(3) is not None:
            return ("hr", swin_ids[f"{s}.{m.group(3)}"], n_swin)
        return ("hr", swin_ids[f"{s}.0"], n_swin)      # downsample: with the stage's first block
    for enc in ("s2", "s1"):
        if name.startswith(f"backbone.{enc}."):
            m = re.match(rf"backbone\.{enc}\.layers\.(\d+)\.", name)
            if m is not None:
                return (enc, int(m.group(1)) + 1, vit_depth)
            return (enc, 0 if re.search(r"(patch_embed|cls_token|pos_embed)", name) else vit_depth, vit_depth)
    return None


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Groups keyed by (lr scale, decay?) with ``lr_scale`` for the schedule."""
    swin_ids = _swin_block_ids(model)
    vit_depth = model.backbone.config.vit_depth
    groups: dict[tuple[float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        where = layer_of(name, swin_ids, vit_depth)
        scale = 1.0 if where is None else layer_decay ** (where[2] - where[1])
        decay = p.dim() > 1 and not any(k in name for k in _NO_DECAY)
        g = groups.setdefault((scale, decay), {"params": [], "names": [], "lr_scale": scale,
                                               "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
        del g["names"]
    # the fused (single-kernel) AdamW runs on CPU and CUDA and reads each tensor once per
    # step instead of once per foreach op: ~2x faster where the step is memory bound
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def cosine_schedule(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_from: float = 0.0) -> float:
    """Linear from warmup_from to start over ``warmup`` steps, then cosine from start to end."""
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over each group's initial lr (= lr x lr_scale): linear warmup (step s of w
    runs at (s + 1) / w, so no step is wasted at lr 0), then cosine to min_lr."""
    floor, w = cfg.min_lr / cfg.lr, cfg.warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / w if step < w else cosine_schedule(step, total_steps, 1.0, floor, w))
