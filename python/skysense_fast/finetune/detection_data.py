"""Detection training data: a scene with a vector layer of objects, or COCO-style chips.

A scene (``data.image`` + ``data.labels``, a GeoPackage / GeoJSON / Shapefile whose features'
bounding boxes are the objects, in any CRS, with an integer class attribute) is split into
spatial blocks like segmentation scenes (:mod:`.split`; a block holds the boxes whose centre
lies in it); training crops lie inside training blocks and carry the boxes at least half inside
them; a validation window scores the boxes whose centre lies in its part of a held-out block.

Chips (``data.chips``: a COCO JSON of ``images`` / ``annotations`` (``bbox`` = x, y, w, h) /
``categories``, the format of the official DIOR recipe; the images in ``data.chip_dir``, by
default the JSON's folder): the category ids are the class values; crowd boxes are not trained
on (as mmdet) and are COCO's crowd regions in the evaluation. Samples are dicts: ``hr`` (3, H, W)
normalised, ``boxes`` (n, 4) float32 xyxy pixels, ``labels`` (n,) class indices.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from ..data.geotiff import hr_scaler, open_raster, read_hr_window, scene_latlon
from ..data.labels import ClassMap
from ..errors import InputError
from .augment import d4_transform
from .boxes import area, centres_in, clip, d4_boxes, in_window, vector_boxes
from .chips import read_chip
from .split import spatial_split

logger = logging.getLogger(__name__)


def turned(sample: dict, k: int) -> dict:
    """A sample under symmetry k of :func:`~.augment.d4_transform`, its boxes alike."""
    h, w = sample["hr"].shape[-2:]
    out = {**sample, "hr": d4_transform(sample["hr"], k), "boxes": d4_boxes(sample["boxes"], k, h, w)}
    if "crowd_boxes" in sample:
        out["crowd_boxes"] = d4_boxes(sample["crowd_boxes"], k, h, w)
    return out


class SceneDetectionData:
    def __init__(self, image: str, labels: str, *, classes: ClassMap | None = None, class_names=None,
                 label_field: str = "class", hr_scale: str | None = None, crop: int = 512, block: int = 1024,
                 val_fraction: float = 0.2, seed: int = 0, stats=None):
        self.image, self.crop, self.stats = image, crop, stats
        with open_raster(image, bands=3) as ds:
            self.height, self.width, self.nodata = ds.height, ds.width, ds.nodata
            self.hr_scale = hr_scaler(ds, hr_scale)
            self.boxes, self.labels, self.classes = vector_boxes(labels, label_field, ds, classes, class_names)
            self.latlon = scene_latlon(ds)
        if self.height < crop or self.width < crop:
            raise InputError(f"{image} is {self.height} x {self.width} pixels, smaller than data.crop ({crop})")
        centres = np.zeros((self.height, self.width), bool)
        cx = ((self.boxes[:, 0] + self.boxes[:, 2]) / 2).astype(int).clip(0, self.width - 1)
        cy = ((self.boxes[:, 1] + self.boxes[:, 3]) / 2).astype(int).clip(0, self.height - 1)
        centres[cy, cx] = True
        self.split = spatial_split(centres, block, val_fraction, seed)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.classes.num_classes)

    def read(self, r: int, c: int, size: int, ds=None) -> dict:
        """The window at (r, c): pixels beyond the scene and nodata are zero input; the boxes at
        least half inside it."""
        x, _, h, w = read_hr_window(self.image, r, c, size, self.hr_scale, self.stats, self.nodata, ds)
        boxes, labels = in_window(self.boxes, self.labels, c, r, w, h)
        return {"hr": torch.from_numpy(x), "boxes": boxes, "labels": labels}

    def train_sample(self, generator: torch.Generator, augment: bool, ds=None) -> dict:
        """A random crop inside a random training block, with a random D4 symmetry."""
        r, c, *_ = self.split.random_crop(self.height, self.width, self.crop, generator)
        sample = self.read(r, c, self.crop, ds)
        if augment:
            sample = turned(sample, int(torch.randint(8, (1,), generator=generator)))
        return sample

    def val_windows(self) -> list[tuple[int, int, int]]:
        """(row, col, size) crops covering the validation blocks."""
        return [(r, c, self.crop) for r0, c0, h, w in self.split.windows("val", self.height, self.width)
                for r in range(r0, r0 + h, self.crop) for c in range(c0, c0 + w, self.crop)]

    def val_sample(self, window, ds=None) -> dict:
        """The window's image; as truth what it shows of the boxes whose visible part is centred in
        its part of its block (in the window's pixels); ``region``: that part, where detections are
        scored by their centre too."""
        r, c, size = window
        block = self.split.block
        br, bc = (r // block) * block, (c // block) * block
        y1, x1 = min(r + size, br + block, self.height), min(c + size, bc + block, self.width)
        sample = self.read(r, c, size, ds)
        # what the window shows of each box, chosen by its centre as the detections are (trainer._within)
        cut = clip(self.boxes, c, r, c + size, r + size)
        own = centres_in(cut, c, r, x1, y1) & (area(cut) > 0)
        cut = cut[own] - np.array([c, r, c, r], np.float64)
        sample["boxes"] = torch.from_numpy(cut.astype(np.float32)).reshape(-1, 4)
        sample["labels"] = torch.from_numpy(self.labels[own].astype(np.int64))
        sample["region"] = torch.tensor([0.0, 0.0, x1 - c, y1 - r])
        return sample


class CocoChips(torch.utils.data.Dataset):
    """Detection chips of a COCO JSON; ``classes`` fixes the class values (the category ids
    stored with a task) and their order."""

    def __init__(self, annotations: str, images: str | None = None, classes: ClassMap | None = None,
                 stats=None, what: str = "data.chips"):
        self.stats = stats
        try:
            with open(annotations, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} not found: {annotations}") from None
        except (OSError, ValueError) as e:
            raise InputError(f"{what} {annotations} is not a readable JSON file ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list)
                                                for k in ("images", "annotations", "categories")):
            raise InputError(f"{what} {annotations}: expected a COCO JSON object with lists 'images', "
                             "'annotations' and 'categories'")
        try:
            cats = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in raw["categories"])
            found = ClassMap(tuple(i for i, _ in cats), tuple(n for _, n in cats), at_least=1)
            root = images if images is not None else os.path.dirname(os.path.abspath(annotations))
            self.ids = [int(im["id"]) for im in raw["images"]]
            self.paths = [os.path.join(root, str(im["file_name"])) for im in raw["images"]]
            self.sizes = {(im.get("width"), im.get("height")) for im in raw["images"]}
            per: dict[int, list] = {i: [] for i in self.ids}
            crowd: dict[int, list] = {i: [] for i in self.ids}
            dropped = 0
            for a in raw["annotations"]:
                x, y, w, h = (float(v) for v in a["bbox"])
                image = int(a["image_id"])
                if image not in per:
                    raise InputError(f"{what} {annotations}: annotation {a.get('id', '?')} is of image_id {image}, "
                                     "which 'images' does not list")
                if not all(np.isfinite((x, y, w, h))):
                    raise InputError(f"{what} {annotations}: annotation {a.get('id', '?')} has bbox {a['bbox']}: "
                                     "x, y, w, h must be finite numbers")
                if w < 1 or h < 1:
                    dropped += 1
                    continue
                (crowd if a.get("iscrowd", 0) else per)[image].append((x, y, x + w, y + h, int(a["category_id"])))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{what} {annotations}: not a COCO detection file ({type(e).__name__}: {e}): images "
                             "need id and file_name, annotations image_id, bbox [x, y, w, h] and category_id, "
                             "categories id and name") from None
        self.classes = classes or found
        stray = sorted(set(found.values) - set(self.classes.values))
        if stray:
            raise InputError(f"{what} {annotations}: categories {stray[:10]} are not among the task's classes "
                             f"{list(self.classes.values)}")
        if not self.paths:
            raise InputError(f"{what} {annotations} lists no image")
        missing = [p for p in self.paths if not os.path.exists(p)]
        if missing:
            raise InputError(f"{what} {annotations}: {len(missing)} listed image(s) do not exist, e.g. {missing[0]} "
                             "(data.chip_dir: the folder holding them)")
        if dropped:
            logger.info(f"{annotations}: {dropped} box(es) under a pixel wide or high left out")
        self.targets = [self._rows(per[i], annotations) for i in self.ids]
        self.crowds = [self._rows(crowd[i], annotations) for i in self.ids]
        if not any(len(b) for b, _ in self.targets):
            raise InputError(f"{what} {annotations} holds no box")

    def _rows(self, rows: list, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        a = np.array(rows, np.float64).reshape(-1, 5)
        labels = self.classes.to_index(a[:, 4].astype(np.int64), np.ones(len(a), bool), where)
        return torch.from_numpy(a[:, :4].astype(np.float32)), torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        """The chip's sample; its crowd regions (``iscrowd``: trained on as neither object nor
        background by mmdet, left out here) ride along for the evaluation alone."""
        (boxes, labels), (crowd, crowd_labels) = self.targets[i], self.crowds[i]
        return {"hr": read_chip(self.paths[i], self.stats), "boxes": boxes.clone(), "labels": labels.clone(),
                "crowd_boxes": crowd.clone(), "crowd_labels": crowd_labels.clone()}

    def counts(self) -> np.ndarray:
        return np.bincount(torch.cat([lab for _, lab in self.targets]).numpy(), minlength=self.classes.num_classes)


def check_one_size(chips, per_rank: int, what: str) -> None:
    """Chips of several sizes (as the COCO JSON states them) batch only one to a rank: refused
    before training, not at the first batch that mixes them."""
    sizes = getattr(chips, "dataset", chips).sizes
    if per_rank > 1 and len(sizes) > 1 and (None, None) not in sizes:
        shown = sorted(sizes, key=str)[:4]
        raise InputError(f"{what}: chips of {len(sizes)} sizes (width, height: {shown}, ...) cannot share a batch: "
                         f"set train.batch_size to one per rank, or cut them to one size")
