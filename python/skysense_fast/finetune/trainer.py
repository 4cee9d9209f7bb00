"""Fine-tuning: a task model (backbone + head) trained by the shared loop (:mod:`skysense_fast.train`).

Modes: ``full`` (everything, with layer-wise lr decay over the encoders), ``frozen`` (the
backbone fixed, in eval mode, without gradients; the head trains), ``linear_probe`` (frozen,
and a linear head). Validation on the held-out spatial blocks (segmentation) or chips
(classification) every ``train.evaluate_every`` steps and at the end, into ``metrics.json``.
The result is ``<out_dir>/<task.name>.safetensors``: the task model with its classes.

Losses: cross-entropy over labelled pixels (the ignore label left out; a crop without labels
adds nothing instead of a NaN), optionally weighted per class; binary cross-entropy for
multi-label chips. Under data parallelism the mean is over every rank's pixels, so the
gradients are one process's, except for BatchNorm in the heads, whose batch statistics are
each rank's own (SyncBatchNorm on CUDA: ``convert_sync_batchnorm``; gloo has none).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed
from ..data.labels import IGNORE_INDEX, ClassMap
from ..data.series import series_input
from ..errors import InputError
from ..metrics import ClassificationMetrics, DetectionMetrics, SegmentationMetrics
from ..train import loop
from ..train.optim import build_optimizer, build_scheduler
from .augment import d4_transform
from .chips import ChipDataset
from .config import SHAPE_FIELDS, FinetuneConfig, validate
from .detection_data import CocoChips, SceneDetectionData, check_one_size, turned
from .scene_data import SceneSegmentationData
from .series_data import SeriesSegmentationData
from .task import DENSE, TaskModel, TaskSpec, build_task_model, save_task

logger = logging.getLogger(__name__)


def _seed(*numbers: int) -> int:
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _task_classes(t) -> ClassMap | None:
    """task.classes as a ClassMap (values sorted, each name kept with its value), or None."""
    return ClassMap(*_pairs(t)) if t.classes else None


def open_data(cfg: FinetuneConfig):
    """(train data, val data or None, ClassMap) of the config, every input checked."""
    t, d = cfg.task, cfg.data
    if t.kind == "detection":
        return _detection_data(cfg)
    if t.kind == "temporal":
        assert d.labels is not None   # validate() requires it
        temporal = SeriesSegmentationData(d.labels, {"s2": series_input(d.s2, d.s2_dates, "s2", d.s2_band_order),
                                                     "s1": series_input(d.s1, d.s1_dates, "s1")},
                                          classes=_task_classes(t), class_names=t.class_names, crop=d.crop,
                                          block=d.block, val_fraction=d.val_fraction, seed=d.seed)
        return temporal, None, temporal.classes
    if t.kind in DENSE:
        assert d.image is not None and d.labels is not None   # validate() requires them
        classes = _task_classes(t)
        series = {"s2": series_input(d.s2, d.s2_dates, "s2", d.s2_band_order),
                  "s1": series_input(d.s1, d.s1_dates, "s1")}
        data = SceneSegmentationData(d.image, d.labels, classes=classes, class_names=t.class_names,
                                     label_field=d.label_field, hr_scale=d.hr_scale, crop=d.crop, block=d.block,
                                     val_fraction=d.val_fraction, seed=d.seed, series=series, image2=d.image2,
                                     hr_scale2=d.hr_scale2)
        return data, None, data.classes
    assert d.chips is not None   # validate() requires it
    train: ChipDataset | _ChipSubset = ChipDataset(d.chips, classes=t.class_names, multi_label=t.multi_label)
    val: ChipDataset | torch.utils.data.Subset
    if d.val_chips:
        val = ChipDataset(d.val_chips, classes=train.classes, multi_label=t.multi_label)
    else:  # a seeded share of the chips held out
        keep, held = _held_out(len(train), d.val_fraction, d.seed, f"data.chips {d.chips}")
        val = torch.utils.data.Subset(train, held)
        train = _ChipSubset(train, keep)
    return train, val, ClassMap(tuple(range(len(train.classes))), tuple(train.classes))


def _held_out(n: int, fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """(train, val) indices: a seeded share of ``n`` separate images (no spatial leak) held out."""
    if n < 2:
        raise InputError(f"{what}: {n} chip(s); need two (one to train, one to validate)")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(fraction * n)))
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def _detection_data(cfg: FinetuneConfig):
    t, d = cfg.task, cfg.data
    classes = None if t.classes is None else ClassMap(*_pairs(t), at_least=1)
    if d.chips is None:   # a scene and a vector layer of boxes
        assert d.image is not None and d.labels is not None   # validate() requires them
        scene = SceneDetectionData(d.image, d.labels, classes=classes, class_names=t.class_names,
                                   label_field=d.label_field, hr_scale=d.hr_scale, crop=d.crop, block=d.block,
                                   val_fraction=d.val_fraction, seed=d.seed)
        return scene, None, scene.classes
    train = CocoChips(d.chips, d.chip_dir, classes)
    if d.val_chips:
        return train, CocoChips(d.val_chips, d.val_chip_dir, train.classes, what="data.val_chips"), train.classes
    keep, held = _held_out(len(train), d.val_fraction, d.seed, f"data.chips {d.chips}")
    return torch.utils.data.Subset(train, keep), torch.utils.data.Subset(train, held), train.classes


def _pairs(t) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """task.classes sorted, each name kept with its value."""
    pairs = sorted(zip(t.classes, t.class_names or [""] * len(t.classes), strict=True))
    return tuple(v for v, _ in pairs), tuple(n for _, n in pairs) if t.class_names else ()


class _ChipSubset(torch.utils.data.Subset):
    dataset: ChipDataset   # what open_data subsets

    @property
    def classes(self):
        return self.dataset.classes

    def counts(self) -> np.ndarray:
        full = self.dataset
        n = np.zeros(len(full.classes), np.int64)
        for i in self.indices:
            for c in full.labels[i]:
                n[full.index[c]] += 1
        return n


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present; absent classes 0."""
    counts = counts.astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    present = counts > 0
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def collate(samples: list[dict], what: str) -> dict:
    """Samples (dicts of tensors: hr, target, series) stacked into a batch; a detection sample's
    boxes and labels (and scoring region) become ``targets``, a list of one dict per image."""
    shapes = {tuple(s["target"].shape[-2:] if "hr" not in s else s["hr"].shape) for s in samples}
    if len(shapes) > 1:
        raise InputError(f"{what}: a batch holds images of several sizes {sorted(shapes)}; chips must share one size")
    per_image = ("boxes", "labels", "region", "crowd_boxes", "crowd_labels")
    out: dict = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k not in per_image}
    if "boxes" in samples[0]:
        out["targets"] = [{k: s[k] for k in per_image if k in s} for s in samples]
    return out


def to_device(batch: dict, device) -> dict:
    return {k: [{n: t.to(device) for n, t in d.items()} for d in v] if k == "targets" else v.to(device)
            for k, v in batch.items()}


class _Finetuning:
    """The fine-tuning run as the loop's trainee."""

    def __init__(self, cfg: FinetuneConfig, device: torch.device, rank: int, world: int):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.data, self.val, classes = open_data(cfg)        # bad input fails here, before the model
        t = cfg.task
        if t.kind == "detection" and cfg.data.chips is not None:
            check_one_size(self.data, cfg.train.batch_size // world, "data.chips")
            check_one_size(self.val, cfg.train.batch_size, "data.val_chips")
        self.detection = t.kind == "detection"
        self.spec = TaskSpec(kind=t.kind, class_values=classes.values, class_names=tuple(classes.class_names()),
                             model_name=cfg.model.name, model_overrides=dict(cfg.model.overrides), mode=t.mode,
                             multi_label=t.multi_label, head_channels=t.head_channels, extra=t.extra,
                             features=t.features, dropout=t.dropout, hr_scale=cfg.data.hr_scale,
                             hr_scale2=cfg.data.hr_scale2,
                             inputs=("hr", "hr2") if t.kind == "change" else
                             tuple(self.data.series) if t.kind == "temporal" else
                             ("hr", *getattr(self.data, "series", {})),
                             s2_band_order=cfg.data.s2_band_order)
        torch.manual_seed(cfg.train.seed)                    # same initial head on every rank
        self.model: TaskModel = build_task_model(self.spec, device, cfg.model.weights)
        if cfg.train.grad_checkpointing:
            self.model.backbone.set_grad_checkpointing(True)
        stats = self.model.normalisation
        self.scene = hasattr(self.data, "train_sample")   # a scene's crops (else chips)
        if self.scene:
            self.data.stats = stats
        else:
            for ds in (self.data, self.val):
                getattr(ds, "dataset", ds).stats = stats
        self.latlon = torch.tensor([self.data.latlon if self.scene else (0.0, 0.0)])
        self.weight = class_weights(self.data.counts()).to(device) if t.class_weights == "balanced" else None
        if world > 1 and device.type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # mmseg's SyncBN
        if world > 1:
            loop.shard(self.model, [*self.model.backbone.blocks(), self.model.head],
                       bf16_params=cfg.train.precision == "bfloat16")
        self.modules = {"model": self.model}
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.grad_clip = cfg.optim.grad_clip

    def _step_samples(self, step: int):
        B, t, d = self.cfg.train.batch_size, self.cfg.train, self.cfg.data
        local = B // self.world
        out = []
        for i in range(self.rank * local, (self.rank + 1) * local):
            g = torch.Generator().manual_seed(_seed(d.seed, t.seed, step, i))
            if self.scene:
                out.append(self.data.train_sample(g, d.augment))
                continue
            n = len(self.data)
            epoch, j = divmod(step * B + i, n)   # each epoch a fresh seeded order of the chips
            index = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(d.seed, t.seed, epoch)))[j]
            item = self.data[int(index)]
            sample = item if self.detection else {"hr": item[0], "target": item[1]}
            if d.augment:   # quarter turns swap a non-square chip's sides: flips and half turns only
                k = int(torch.randint(8, (1,), generator=g))
                k = k if sample["hr"].shape[-1] == sample["hr"].shape[-2] else k - k % 2
                sample = turned(sample, k) if self.detection else {**sample, "hr": d4_transform(sample["hr"], k)}
            out.append(sample)
        return collate(out, "data.chips")

    def batches(self, start: int):
        for step in range(start, self.cfg.train.steps):
            yield to_device(self._step_samples(step), self.device)

    def _logits(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "target"}
        return self.model(latlon=self.latlon.expand(len(batch["target"]), 2).to(self.device), **inputs)

    def losses(self, step: int, batch):
        if self.detection:   # the RPN's and the RoI heads' means over this rank's images
            terms = self.model(batch["hr"], targets=batch["targets"])
            return {"total": sum(terms.values()), **{k.removeprefix("loss_"): v for k, v in terms.items()}}
        total, count = self.model.loss_terms(self._logits(batch), batch["target"], self.weight, IGNORE_INDEX)
        if self.world > 1:  # over every rank's pixels: gradients (averaged by FSDP) are one process's
            count = count.detach().clone()
            dist.all_reduce(count)
            count = count / self.world
        return {"total": total / count.clamp(min=1e-12)}

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def evaluate(self, step: int) -> dict:
        """The validation metrics; under torchrun each rank scores its share of the windows (or
        chips) and torchmetrics sums the ranks' counts when computing."""
        spec = self.spec
        names = list(spec.class_names)
        metrics: SegmentationMetrics | ClassificationMetrics | DetectionMetrics
        if self.detection:
            metrics = DetectionMetrics(names, self.device)
            windows = self.data.val_windows() if self.scene else list(range(len(self.val)))
            read = (lambda j: self.data.val_sample(windows[j])) if self.scene else (lambda j: self.val[windows[j]])
            for chunk, batch in self._val_batches(len(windows), read):
                found = self.model(batch["hr"])
                if chunk:
                    metrics.update([_within(p, t.get("region")) for p, t in zip(found, batch["targets"], strict=True)],
                                   batch["targets"])
        elif spec.kind in DENSE:
            metrics = SegmentationMetrics(len(names), IGNORE_INDEX, names, self.device)
            windows = self.data.val_windows()
            for chunk, batch in self._val_batches(len(windows), lambda j: self.data.val_sample(windows[j])):
                pred = self._logits(batch).argmax(1)
                if chunk:
                    metrics.update(pred, batch["target"])
        else:
            metrics = ClassificationMetrics(len(names), spec.multi_label, names, self.device)
            for chunk, batch in self._val_batches(len(self.val), lambda j: dict(zip(("hr", "target"), self.val[j],
                                                                                   strict=True))):
                logits = self.model(batch["hr"])
                if chunk:
                    metrics.update(logits, batch["target"])
        return metrics.compute()

    def _val_batches(self, n: int, read):
        """(indices, batch on the device) of this rank's share of ``n`` validation items (every
        world-th), ``read(j)`` each, as many batches on every rank (FSDP's forward is collective:
        the last ones may be empty, and then hold item 0, not scored). A rank that fails to read
        stops every rank (:func:`~skysense_fast.distributed.agree`), none waits in a forward."""
        B = self.cfg.train.batch_size
        mine = list(range(self.rank, n, self.world))
        for i in range(0, -(-n // self.world), B):
            chunk = mine[i:i + B]
            try:
                batch, error = to_device(collate([read(j) for j in chunk or [0]], "validation"), self.device), None
            except Exception as e:
                batch, error = None, e
            distributed.agree(error, "validation")
            yield chunk, batch


def _within(found: dict, region: torch.Tensor | None) -> dict:
    """The detections whose centre lies in ``region`` (x0, y0, x1, y1), all without one."""
    if region is None:
        return found
    b = found["boxes"]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx >= region[0]) & (cx < region[2]) & (cy >= region[1]) & (cy < region[3])
    return {k: v[keep] for k, v in found.items()}


def finetune(cfg: FinetuneConfig, *, resume: bool = True, stop_after: int | None = None) -> dict:
    """Run (or continue) the fine-tuning described by ``cfg``; writes
    ``<out_dir>/<task.name>.safetensors`` (the task model) and ``<out_dir>/metrics.json``.
    Returns the loop's summary with "weights" (the file, or None when the run did not finish)."""
    device = loop.device_of(cfg.train.device)
    rank, world = distributed.init(device)
    validate(cfg, world)
    run = _Finetuning(cfg, device, rank, world)
    report = getattr(run.model, "load_report", None)
    if report is not None and rank == 0:
        logger.info(f"backbone weights: {report}")
    result = loop.run(run, cfg.train, config=cfg.to_dict(), shape_fields=SHAPE_FIELDS, rank=rank, world=world,
                      config_defaults=type(cfg)().to_dict(),
                      resume=resume, stop_after=stop_after, evaluate_every=cfg.train.evaluate_every,
                      what="finetune")
    result["weights"] = None
    if result["status"] == "done" and result["step"] == cfg.train.steps:
        path = os.path.join(cfg.train.out_dir, f"{cfg.task.name}.safetensors")
        export_task(run.model, run.spec, path)
        result["weights"] = path
        if rank == 0:
            logger.info(f"wrote {path}: the task model with its {len(run.spec.class_values)} classes, for "
                "`skysense-fast predict --task`")
    return result


def export_task(model: TaskModel, spec: TaskSpec, path: str) -> None:
    """The trained task model as one file (collective under FSDP2; rank 0 writes)."""
    if not dist.is_initialized():
        save_task(model, path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        full = build_task_model(spec, "cpu")
        full.load_state_dict(state, strict=True)
        full.normalisation = model.normalisation
        save_task(full, path)
    dist.barrier()
