"""The pretraining loop: one process, or data-parallel with FSDP2 under ``torchrun``.

Determinism that resuming and data parallelism rely on: the data of step s is the global
batch of samples [s B, (s + 1) B) (mod the dataset), each view drawn from a generator
seeded by (seed, step, sample, view) — not from a global RNG — so a resumed run sees what
the uninterrupted one saw, and rank r of N simply takes its slice of the batch. Every loss
is a mean over samples (``losses.distill_loss``), the centres and the prototype bank
all-reduce their sums, and FSDP averages gradients: N ranks compute what one process does.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed, models
from ..train import loop
from ..train.optim import build_optimizer, build_scheduler, cosine_schedule
from .augment import collate, make_view
from .config import PretrainConfig, validate
from .losses import DINOHead
from .objective import SkySensePretrainer, ema_update, make_teacher
from .synthetic import SyntheticMultimodal

# config fields that fix the shapes of what a checkpoint holds: resuming with others cannot work
SHAPE_FIELDS = {"model": ("name", "overrides"), "loss": ("out_dim", "head_hidden", "head_bottleneck", "cma_dim"),
                "data": ("modalities",)}   # the modalities decide which parameters have optimiser state

logger = logging.getLogger(__name__)


def shard(module: SkySensePretrainer, mesh=None, bf16_params: bool = False) -> None:
    """FSDP2 per block: every Swin block, ViT layer, fusion layer and head, then the root."""
    heads = [m for m in module.modules() if isinstance(m, DINOHead)]
    loop.shard(module, [*module.backbone.blocks(), *heads], mesh, bf16_params)


def build_model(cfg: PretrainConfig, device: torch.device) -> SkySensePretrainer:
    with device:  # initialise where it will train: a 2B model's init on the host takes minutes
        backbone = models.create(cfg.model.name, **cfg.model.overrides)
    if cfg.model.weights:
        from ..weights import load_any

        load_any(backbone, cfg.model.weights)
    if cfg.train.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    for name in backbone.unreached(cfg.data.modalities):   # never trained: no gradients, no optimiser state
        getattr(backbone, name).requires_grad_(False)
    with device:
        return SkySensePretrainer(backbone, cfg.loss, cfg.data.modalities).to(device)


def make_dataset(cfg: PretrainConfig):
    """The config's dataset: synthetic, or windows of real scenes (``data.kind: scenes``)."""
    d = cfg.data
    if d.kind == "scenes":
        from .config import scene_list
        from .scenes import SceneDataset

        if d.manifest:
            scenes = scene_list(d.manifest, d.modalities)
        else:
            assert d.hr is not None   # validate() requires it, and the series of the trained modalities
            scenes = [{"hr": d.hr, "s2": d.s2, "s1": d.s1}]
        parts = [SceneDataset(sc["hr"], sc.get("s2"), sc.get("s1"), d.grid, d.s2_frames, d.s1_frames,
                              d.stride or None, d.hr_scale, latlon=sc.get("latlon", d.latlon))
                 for sc in scenes]
        return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    return SyntheticMultimodal(d.samples, d.grid, d.s2_frames, d.s1_frames, d.classes, d.seed,
                              modalities=d.modalities)


def seed_of(*numbers: int) -> int:
    """A 63-bit seed mixed from non-negative ints, the same in every process (unlike hash())."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_views(dataset, cfg: PretrainConfig, step: int, rank: int, world: int, device: torch.device):
    """The batched views (and geometries) of this rank's slice of step ``step``'s batch: two
    global views, then ``data.local_crops`` local ones."""
    B = cfg.train.batch_size
    local = B // world
    n_views = 2 + cfg.data.local_crops   # two global views, then the student-only local ones
    views: list[list] = [[] for _ in range(n_views)]
    geoms: list[list] = [[] for _ in range(n_views)]
    for i in range(rank * local, (rank + 1) * local):
        index = (step * B + i) % len(dataset)
        sample = dataset[index]
        for v in range(n_views):
            g = torch.Generator().manual_seed(seed_of(cfg.data.seed, cfg.train.seed, step, index, v))
            crop = cfg.data.crop if v < 2 else cfg.data.local_crop
            view, geom = make_view(sample, crop, cfg.data.min_frames, g)
            view["index"] = torch.tensor(index)
            views[v].append(view)
            geoms[v].append(geom)
    return ([{k: x.to(device) for k, x in collate(vs).items()} for vs in views],
            [torch.stack(gs) for gs in geoms])


class _StepBatches(torch.utils.data.Dataset):
    """Step k of a run -> that step's views for one rank (CPU tensors): what DataLoader
    workers prepare ahead of the training loop. Deterministic per step, so workers, resuming
    and the rank count change nothing."""

    def __init__(self, dataset, cfg: PretrainConfig, start: int, rank: int, world: int):
        self.dataset, self.cfg, self.start, self.rank, self.world = dataset, cfg, start, rank, world

    def __len__(self) -> int:
        return self.cfg.train.steps - self.start

    def __getitem__(self, k: int):
        return step_views(self.dataset, self.cfg, self.start + k, self.rank, self.world, torch.device("cpu"))


def step_batches(dataset, cfg: PretrainConfig, start: int, rank: int, world: int, device: torch.device):
    """Iterator over (views, geoms) for steps start, start + 1, ...: in this process, or
    prepared by ``train.num_workers`` DataLoader workers (pinned memory on CUDA)."""
    if cfg.train.num_workers == 0:
        for step in range(start, cfg.train.steps):
            yield step_views(dataset, cfg, step, rank, world, device)
        return
    loader = torch.utils.data.DataLoader(_StepBatches(dataset, cfg, start, rank, world), batch_size=None,
                                         num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=2, persistent_workers=False)
    for views, geoms in loader:
        yield [{k: x.to(device, non_blocking=True) for k, x in v.items()} for v in views], geoms


def train_step(student, teacher, optimizer, views, geoms, *, teacher_temp: float, momentum: float,
               generator: torch.Generator, grad_clip: float = 0.0, bf16: bool = False,
               world: int = 1) -> tuple[dict[str, float], bool]:
    """One pretraining step: losses, backward, clipping, AdamW, teacher EMA (see
    :func:`~skysense_fast.train.loop.optimiser_step`)."""
    return loop.optimiser_step(student, optimizer, lambda: student(views, geoms, teacher, teacher_temp, generator),
                               grad_clip=grad_clip, bf16=bf16, world=world,
                               after=lambda: ema_update(teacher, student, momentum))


class _Pretraining:
    """The pretraining run as the loop's trainee: student (trained) and EMA teacher."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, rank: int, world: int):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        torch.manual_seed(cfg.train.seed)          # same initial weights on every rank
        self.student = build_model(cfg, device)
        self.teacher = make_teacher(self.student)
        self.teacher.train()
        if world > 1:
            bf16 = cfg.train.precision == "bfloat16"
            shard(self.student, bf16_params=bf16)
            shard(self.teacher, bf16_params=bf16)
        self.modules = {"student": self.student, "teacher": self.teacher}
        self.optimizer = build_optimizer(self.student, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.grad_clip = cfg.optim.grad_clip
        self.dataset = make_dataset(cfg)
        self.momentum = cfg.optim.teacher_momentum

    def batches(self, start: int):
        return step_batches(self.dataset, self.cfg, start, self.rank, self.world, self.device)

    def losses(self, step: int, batch):
        lo, t, o = self.cfg.loss, self.cfg.train, self.cfg.optim
        views, geoms = batch
        teacher_temp = cosine_schedule(step, t.steps, lo.teacher_temp, lo.teacher_temp, lo.teacher_temp_warmup_steps,
                                       lo.teacher_temp_warmup_from)
        gen = torch.Generator().manual_seed(seed_of(t.seed, step, 2))  # same pixels on every rank
        self.momentum = cosine_schedule(step, t.steps, o.teacher_momentum, o.teacher_momentum_final)
        return self.student(views, geoms, self.teacher, teacher_temp, gen)

    def after_step(self, step: int) -> dict[str, float]:
        ema_update(self.teacher, self.student, self.momentum)
        return {"teacher_momentum": self.momentum}

    def evaluate(self, step: int) -> None:
        return None


def pretrain(cfg: PretrainConfig, *, resume: bool = True, stop_after: int | None = None) -> dict:
    """Run (or continue) the pretraining described by ``cfg``.

    Writes ``<out_dir>/metrics.jsonl`` (one line per logged step: every loss part, lr,
    teacher momentum, samples/s) and checkpoints under ``<out_dir>/checkpoints``. With
    ``resume`` it continues from the latest complete checkpoint there. ``stop_after`` ends
    the run after that many steps of this call (as an interruption would), without the
    final checkpoint. Returns {"status": "done" | "stopped" | "nan", "step", "losses"}.
    """
    device = loop.device_of(cfg.train.device)
    rank, world = distributed.init(device)
    validate(cfg, world)
    run = _Pretraining(cfg, device, rank, world)
    result = loop.run(run, cfg.train, config=cfg.to_dict(), shape_fields=SHAPE_FIELDS, rank=rank, world=world,
                      config_defaults=type(cfg)().to_dict(),
                      resume=resume, stop_after=stop_after, what="pretrain")
    status, step, out_dir = result["status"], result["step"], cfg.train.out_dir
    student, teacher, t = run.student, run.teacher, cfg.train
    weights = None
    if status == "done" and step == t.steps:
        weights = export_weights(student, teacher, cfg, os.path.join(out_dir, f"{cfg.model.name}.safetensors"))
        if rank == 0:
            logger.info("wrote %s: the teacher's backbone with the prototype bank, for `skysense-fast embed --weights`",
                        weights)
    return {"status": status, "step": step, "losses": result["losses"], "weights": weights}


def export_weights(student: SkySensePretrainer, teacher: SkySensePretrainer, cfg: PretrainConfig, path: str) -> str:
    """The trained model as a ``save_weights`` file (collective under FSDP2; rank 0 writes).

    The EMA teacher's backbone is exported (DINO's choice: it is the better encoder), with the
    student's geo-context prototype bank (the teacher keeps none)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..weights import save_weights

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
    t_sd = get_model_state_dict(teacher, options=full)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        geo = student.backbone.geo
        assert geo is not None   # the student keeps its bank
        bank = geo.prototypes.detach().cpu()   # a buffer: FSDP2 keeps it whole on every rank
        with torch.device("meta"):
            model = models.create(cfg.model.name, **cfg.model.overrides)
        state = {k[len("backbone."):]: v for k, v in t_sd.items() if k.startswith("backbone.")}
        state["geo.prototypes"] = bank
        model.load_state_dict(state, strict=True, assign=True)
        save_weights(model, path)
    if dist.is_initialized():
        dist.barrier()
    return path
