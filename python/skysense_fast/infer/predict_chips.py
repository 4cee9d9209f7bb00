"""Scene classification of image chips: a classification task's label for each chip, as a CSV.

The chips are a folder (searched through its subfolders), one image, or a list of them (a .txt
of paths, a STAC ItemCollection: :func:`.scenes.read_scene_list`), read as training reads them
(8-bit RGB, the model's statistics; :func:`~skysense_fast.finetune.chips.read_chip`) and batched
by size. Each row: the chip's path (relative to the CSV's folder, as the chips CSV of training and
``evaluate --chips`` reads it), its label (multi-label: every class at probability >= the
threshold, ``|``-separated, as the training CSV writes them; none: empty), the label's probability
(multi-label: the lowest chosen; none chosen: the highest), and one probability column per class.
Written atomically.
"""

from __future__ import annotations

import csv
import io
import os

import torch

from ..atomic import write_text
from ..errors import InputError
from ..finetune.chips import IMAGE_SUFFIXES, read_chip
from .runner import refuse_to_overwrite_an_input


def list_chips(source: str | os.PathLike, asset: str | None = None) -> list[str]:
    """The chips of a folder (recursively, sorted), an image, or a scene list (``asset``: a STAC
    list's image asset)."""
    from .scenes import is_scene_list, read_scene_list

    source = os.fspath(source)
    if os.path.isdir(source):
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names
                       if name.lower().endswith(IMAGE_SUFFIXES))
        if not found:
            raise InputError(f"{source} holds no image chips ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not os.path.exists(source):
        raise FileNotFoundError(f"chips not found: {source} (a folder, an image, or a .txt / STAC list of them)")
    if is_scene_list(source):
        return [s.src for s in read_scene_list(source, asset, distinct_names=False)]
    return [source]


def classify_chips(task, source: str | os.PathLike, dst: str | os.PathLike, *, batch_size: int = 16,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   threshold: float = 0.5, asset: str | None = None) -> dict:
    """Write the labels of ``source``'s chips to ``dst`` (a .csv). Returns a summary (chips,
    chips per label)."""
    spec = task.spec
    if spec.kind != "classification":
        raise InputError(f"classify_chips: the task is {spec.kind}; chip labels need a classification task")
    dst = os.fspath(dst)
    if not dst.lower().endswith(".csv"):
        raise InputError(f"predict: a classification task writes a CSV of chip labels: the output must end in .csv, "
                         f"got {dst}")
    if not 0 < threshold < 1:
        raise InputError(f"predict: --threshold must be in (0, 1), got {threshold}")
    paths = list_chips(source, asset)
    refuse_to_overwrite_an_input(dst, [*paths, *task.source_files])
    task = task.eval().to(device)
    names = list(spec.class_names)
    by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    probs: list[torch.Tensor | None] = [None] * len(paths)

    def run(group: list[tuple[int, torch.Tensor]]) -> None:
        x = torch.stack([t for _, t in group]).to(device)
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype,
                                             enabled=dtype != torch.float32):
            logits = task(x).float()
        p = logits.sigmoid() if spec.multi_label else logits.softmax(1)
        for (i, _), row in zip(group, p.cpu(), strict=True):
            probs[i] = row

    for i, path in enumerate(paths):   # batched by size; a full batch runs at once (memory stays one batch)
        x = read_chip(path, task.normalisation)
        group = by_size.setdefault(tuple(x.shape), [])
        group.append((i, x))
        if len(group) == batch_size:
            run(group)
            group.clear()
    for group in by_size.values():
        if group:
            run(group)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "label", "probability", *(f"p_{n}" for n in names)])
    counts = {n: 0 for n in names}
    for path, p in zip(paths, probs, strict=True):
        assert p is not None   # every chip ran
        if spec.multi_label:
            chosen = [j for j in range(len(names)) if p[j] >= threshold]
            score = min((float(p[j]) for j in chosen), default=float(p.max()))
        else:
            chosen = [int(p.argmax())]
            score = float(p[chosen[0]])
        for j in chosen:
            counts[names[j]] += 1
        # as the chips CSV of training / evaluate reads it: paths relative to the CSV's folder
        where = path if "://" in path else os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(dst)))
        writer.writerow([where, "|".join(names[j] for j in chosen), f"{score:.6f}", *(f"{float(v):.6f}" for v in p)])
    write_text(dst, out.getvalue())
    return {"chips": len(paths), "per_class": counts}
