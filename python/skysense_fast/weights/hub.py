"""Weights as a Hugging Face-style folder: ``model.safetensors`` (the package's own weights file,
config and statistics in its metadata), ``config.json`` (what the model is and eats: config,
bands, normalisation, the task head if any, a format version) and ``README.md`` (a model card).

``from_pretrained`` takes such a folder, or a hub repository id that ``huggingface_hub``
resolves (it honours ``HF_HUB_OFFLINE``); everything read is JSON or safetensors, never code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from .. import atomic
from ..data.normalisation import of as normalisation_of
from ..errors import InputError
from .checks import block_count, check_shapes
from .folders import CARD, CONFIG, FORMAT, FORMAT_VERSION, WEIGHTS, read_config, resolve

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from ..finetune.task import TaskModel
    from ..models import SkySense

CITATION = """@inproceedings{guo2024skysense,
  title     = {SkySense: A Multi-Modal Remote Sensing Foundation Model Towards Universal Interpretation
               for Earth Observation Imagery},
  author    = {Guo, Xin and Lao, Jiangwei and Dang, Bo and Zhang, Yingying and Yu, Lei and Ru, Lixiang and
               Zhong, Liheng and Huang, Ziyuan and Wu, Kang and Hu, Dingxiang and He, Huimei and Wang, Jian and
               Chen, Jingdong and Yang, Ming and Zhang, Yongjun and Li, Yansheng},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {27672--27683},
  year      = {2024}
}"""


def _config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise InputError(f"save_pretrained: a {type(model).__name__} has no model config (a SkySense or a task model)")
    return {k: v for k, v in dataclasses.asdict(cast("DataclassInstance", cfg)).items() if k != "extra"}


def _bands(model: nn.Module, config: dict) -> dict[str, list[str]]:
    from ..data.series import S1_BANDS, S2_BANDS

    spec = getattr(model, "spec", None)
    hr = list(spec.bands) if spec is not None else ["red", "green", "blue", "nir"][:config["hr_in_chans"]]
    return {"hr": hr, "s2": list(S2_BANDS), "s1": list(S1_BANDS)}


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, name: str | None = None,
                    license: str | None = None, description: str = "") -> str:
    """Writes ``folder/`` (created if needed) with the weights, ``config.json`` and a model card.

    ``license``: the licence of these weights (not of this code): an SPDX id or a short text;
    for weights converted from the official release, the terms under which they were released.
    None writes "other" and says that the licence was not stated. Each file is replaced
    atomically (never a partial file); an interrupted save can leave some files of the
    previous save beside new ones: save again.
    """
    from .io import save_weights

    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"save_pretrained: {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    config = _config_dict(model)
    spec = getattr(model, "spec", None)
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name or os.path.basename(os.path.abspath(folder)),
        "architecture": "SkySenseTask" if spec is not None else "SkySense",
        "model": config, "bands": _bands(model, config),
        "normalisation": dataclasses.asdict(normalisation_of(model)),
        "task": json.loads(spec.to_json()) if spec is not None else None,
        "license": license, "description": description,
    }
    extra = {"skysense_task": spec.to_json()} if spec is not None else None
    save_weights(model, os.path.join(folder, WEIGHTS), metadata=extra)
    atomic.write_text(os.path.join(folder, CONFIG), json.dumps(meta, indent=1, sort_keys=True) + "\n")
    params = sum(p.numel() for p in model.parameters())
    atomic.write_text(os.path.join(folder, CARD), model_card(meta, params))
    return folder


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None, device: str = "cpu"
                    ) -> SkySense | TaskModel:
    """The model of a :func:`save_pretrained` folder or hub repository id: a
    :class:`~skysense_fast.models.SkySense`, or the task model when the folder holds one
    (``predict`` / ``evaluate`` take it), in eval mode with its input statistics."""
    folder = resolve(source, revision)
    meta = read_config(folder)
    path = os.path.join(folder, WEIGHTS)
    if meta.get("task") is not None:
        from ..finetune.task import load_task

        task = load_task(path, device)
        task.source_files = (path, os.path.join(folder, CONFIG))
        return task
    from .. import models
    from ..config import parse_section
    from .io import load_weights

    cfg = parse_section(models.SkySenseConfig, meta["model"], f"{os.path.join(folder, CONFIG)} model")
    check_shapes(path, lambda: models.SkySense(cfg), blocks=block_count(cfg))
    model = models.SkySense(cfg)
    load_weights(model, path, strict=True)
    model.source_files = (path, os.path.join(folder, CONFIG))   # what an output must never replace
    return model.to(device).eval()


def _stats_table(norm: dict, bands: dict) -> str:
    rows = ["| input | band | mean | std |", "|---|---|---|---|"]
    for kind in ("hr", "s2", "s1"):
        for b, m, s in zip(bands[kind], norm[f"{kind}_mean"], norm[f"{kind}_std"], strict=False):
            rows.append(f"| {kind} | {b} | {m:g} | {s:g} |")
    return "\n".join(rows)


# the hub's task tag and the head of each task kind, for the model card
TASK_TAGS = {"segmentation": "image-segmentation", "change": "image-segmentation", "temporal": "image-segmentation",
             "classification": "image-classification", "detection": "object-detection"}
TASK_HEADS = {"segmentation": "UPerNet", "change": "UPerNet on the two dates' stage maps differenced",
              "temporal": "FCN on the fused map", "classification": "pooled linear",
              "detection": "Faster R-CNN with FPN"}


def model_card(meta: dict, params: int) -> str:
    """A README.md model card: front matter for the hub, architecture, inputs, licence, citation."""
    cfg, task, lic = meta["model"], meta.get("task"), meta.get("license")
    front = ["---", f"license: {_spdx(lic)}", "library_name: skysense_fast",
             "tags:", "  - remote-sensing", "  - earth-observation", "  - skysense", "  - safetensors"]
    if task is not None:
        front += [f"  - {TASK_TAGS.get(task['kind'], task['kind'])}"]
    front.append("---")
    hr_dims = [cfg["hr_embed_dim"] * 2 ** i for i in range(len(cfg["hr_depths"]))]
    lines = [*front, "", f"# {meta['name']}", ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += [
        "SkySense (CVPR 2024) weights in the skysense_fast format: "
        + (f"a {task['kind']} task model ({task['mode']} fine-tuning, {len(task['class_values'])} classes) on "
           if task else "")
        + "the multi-modal backbone.", "",
        "## Architecture", "",
        f"- {params / 1e6:,.1f} M parameters in this file",
        f"- HR optical: SwinV2, depths {list(cfg['hr_depths'])}, widths {hr_dims}, window {cfg['window_size']}, "
        f"{cfg['hr_in_chans']} input bands",
        f"- Sentinel-2 / Sentinel-1 series: ViT, {cfg['vit_depth']} layers of width {cfg['vit_dim']}",
        f"- Fusion: {cfg['fusion_layers']} layers of width {cfg['fusion_dim']}, date embedding for "
        f"{', '.join(cfg['date_embedding']) or 'none'}",
        f"- Geo-context: {cfg['geo_regions']} regions x {cfg['geo_prototypes']} prototypes",
    ]
    if task:
        names = ", ".join(f"{v} {n}" for v, n in zip(task["class_values"], task["class_names"], strict=True))
        head = "linear probe" if task["mode"] == "linear_probe" and task["kind"] != "classification" else \
            TASK_HEADS.get(task["kind"], task["kind"])
        lines += [f"- Task head: {task['kind']} ({head}), inputs {', '.join(task['inputs'])}; classes: {names}"]
    lines += ["", "## Inputs and their statistics", "",
              "Inputs are normalised as `(x - mean) / std` per band with these values (HR on 0-255, "
              "Sentinel-2 L2A digital numbers without the processing-baseline offset, Sentinel-1 in dB):", "",
              _stats_table(meta["normalisation"], meta["bands"]), "",
              "## Use", "", "```python", "import skysense_fast",
              f"model = skysense_fast.from_pretrained(\"{meta['name']}\")   # this folder, or its hub id", "```", "",
              "or on the command line `skysense-fast "
              + ("predict SCENE.tif -o map.tif --task FOLDER`" if task else "embed SCENE.tif -o features.tif "
                                                                               "--weights FOLDER`"), "",
              "## Licence of these weights", "",
              (f"{lic}. This is the licence of the weights, not of the skysense_fast code (Apache-2.0)."
               if lic else "Not stated by whoever saved these weights. Weights converted from the official SkySense "
                           "release are under the terms of that release; weights you trained on your data are "
                           "yours to license."), "",
              "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


_SPDX = re.compile(r"[A-Za-z0-9.+-]+")


def _spdx(lic: str | None) -> str:
    """The hub's licence field: an SPDX-like id as given, anything else (or nothing) ``other``."""
    return lic.lower() if lic and _SPDX.fullmatch(lic) else "other"
