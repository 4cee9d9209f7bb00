"""Fine-tuning data plumbing: aligned D4 augmentations, spatial block split, chip lists."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from skysense_fast.finetune import ChipDataset, d4_transform, random_d4, read_chip_list, spatial_split


def test_d4_is_the_eight_symmetries_and_keeps_pairs_aligned():
    x = torch.arange(12.0).view(1, 3, 4)
    outs = {tuple(d4_transform(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8  # eight distinct images of a generic grid
    img = torch.randn(3, 5, 5)
    lab = img[0] > 0  # a label computed from the image stays the label of the transformed image
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        a, b = random_d4(img, lab, generator=g)
        assert torch.equal(b, a[0] > 0)
    with pytest.raises(ValueError, match="k must be in 0..7"):
        d4_transform(x, 8)


def test_spatial_split_holds_out_whole_labelled_blocks():
    labelled = np.zeros((100, 130), bool)
    labelled[:, :110] = True  # the right strip has no labels
    s = spatial_split(labelled, 32, val_fraction=0.25, seed=3)
    everything = set(s.train) | set(s.val)
    assert not set(s.train) & set(s.val)
    assert everything == {(r, c) for r in range(0, 100, 32) for c in (0, 32, 64, 96)}  # (.., 128) holds no label
    assert len(s.val) == 4 and spatial_split(labelled, 32, 0.25, seed=3) == s
    assert s.windows("val", 100, 130)[0][2:] in ((32, 32), (4, 32))
    with pytest.raises(ValueError, match="need two"):
        spatial_split(labelled[:10, :10], 32)


def _chip(path, value):
    with rasterio.open(path, "w", driver="PNG", height=8, width=8, count=3, dtype="uint8") as f:
        f.write(np.full((3, 8, 8), value, np.uint8))


def test_chips_from_class_folders_and_csv(tmp_path):
    for cls, v in (("forest", 10), ("urban", 200)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _chip(tmp_path / cls / f"{i}.png", v)
    ds = ChipDataset(tmp_path)
    assert ds.classes == ["forest", "urban"] and len(ds) == 4 and ds.counts().tolist() == [2, 2]
    x, y = ds[3]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.item() == 1
    (tmp_path / "labels.csv").write_text("file,label\nforest/0.png,forest|urban\nurban/1.png,urban\n")
    ml = ChipDataset(tmp_path / "labels.csv", multi_label=True)
    assert ml[0][1].tolist() == [1.0, 1.0] and ml[1][1].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="a chip has 2 labels; single-label chips need one"):
        ChipDataset(tmp_path / "labels.csv")
    with pytest.raises(ValueError, match=r"labels \['urban'\] are not among the classes \['forest'\]"):
        ChipDataset(tmp_path, classes=["forest"])
    (tmp_path / "bad.csv").write_text("gone.png,forest\n")
    with pytest.raises(ValueError, match="do not exist"):
        read_chip_list(tmp_path / "bad.csv")
