"""Official checkpoint layout round trip, strictness, and the package's safetensors files."""

from __future__ import annotations

import os

import pytest
import torch

from skysense_fast import models
from skysense_fast.weights import load_official, load_weights, save_weights


def fresh(seed, **kw):
    torch.manual_seed(seed)
    return models.create("skysense-tiny", **kw)


def official_files(m) -> dict[str, dict[str, torch.Tensor]]:
    """The released files' key layout (SKYSENSE_SPEC.md §2), built from a model."""
    sd = lambda mod, prefix="": {prefix + k: v.clone() for k, v in mod.state_dict().items()}  # noqa: E731
    hr = sd(m.hr, "backbone.")
    hr["backbone.mask_token"] = torch.zeros(1, 1, m.config.hr_embed_dim)
    hr["backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    s2 = sd(m.s2) | {"ctpe": m.ctpe.ctpe.detach().clone()}
    s1 = sd(m.s1) | {"ctpe": m.ctpe.ctpe.detach().clone()}
    return {"hr": hr, "s2": s2, "s1": s1, "head_s2": sd(m.head_s2, "backbone."), "head_s1": sd(m.head_s1),
            "fusion": sd(m.fusion, "backbone.")}


def same_weights(a, b, skip=("geo.",)):
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if not k.startswith(skip):
            assert torch.equal(x, y), k


def test_split_files_round_trip(tmp_path):
    src, dst = fresh(0), fresh(1)
    files = official_files(src)
    paths = {}
    for part, sd in files.items():
        paths[part] = tmp_path / f"skysense_model_{part}.pth"
        torch.save(sd, paths[part])
    report = load_official(dst, paths)
    assert not report.missing and not report.unexpected
    assert "hr.mask_token" in report.ignored and any("relative_position_index" in k for k in report.ignored)
    same_weights(src, dst)


def test_full_checkpoint_round_trip():
    src, dst = fresh(0), fresh(1)
    prefix = {"hr": "backbone_gep.", "s2": "backbone_s2.", "s1": "backbone_s1.", "fusion": "fusion.",
              "head_s2": "head_s2.", "head_s1": "head_s1."}
    full = {prefix[p] + k.removeprefix("backbone."): v for p, sd in official_files(src).items() for k, v in sd.items()
            if k != "ctpe"}
    full["ctpe"] = src.ctpe.ctpe.detach().clone()
    load_official(dst, {"model": full})
    same_weights(src, dst)


def test_strict_errors_name_the_problem():
    m = fresh(0)
    files = official_files(m)
    files["fusion"].pop("backbone.cls_token")
    with pytest.raises(ValueError, match="missing \\(1\\): fusion.cls_token"):
        load_official(m, files)
    assert "fusion.cls_token" in load_official(m, files, strict=False).missing
    files = official_files(m)
    files["s2"]["layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected \\(1\\): s2.layers.0.extra.weight"):
        load_official(m, files)
    other = official_files(fresh(0, vit_dim=48))
    with pytest.raises(ValueError, match="another config"):
        load_official(m, {"s2": other["s2"]})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_official(m, {"hr": "/nonexistent/skysense_model_backbone_hr.pth"})


def test_safetensors_round_trip_and_config_check(tmp_path):
    src, dst = fresh(0), fresh(1)
    path = tmp_path / "tiny.safetensors"
    save_weights(src, path)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []  # written atomically
    load_weights(dst, path)
    same_weights(src, dst, skip=())
    with pytest.raises(ValueError, match="saved for another config.*vit_dim"):
        load_weights(fresh(0, vit_dim=48), path)


def test_load_any_and_the_cli_weights_option(tmp_path, capsys):
    from skysense_fast.cli import main
    from skysense_fast.weights import load_any

    src = models.create("skysense-tiny")            # the CLI seeds 0 itself: these differ from its model
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    args = []
    for part, sd in official_files(src).items():
        path = tmp_path / f"skysense_model_{part}.pth"
        torch.save(sd, path)
        args.append(f"{part}={path}")
    dst = fresh(1)
    assert "loaded" in load_any(dst, args)
    same_weights(src, dst)
    save_weights(src, tmp_path / "w.safetensors")
    dst = fresh(2)
    load_any(dst, str(tmp_path / "w.safetensors"))
    same_weights(src, dst)
    with pytest.raises(ValueError, match="unknown part 'neck'"):
        load_any(dst, [f"neck={tmp_path / 'w.safetensors'}"])
    with pytest.raises(ValueError, match="several files need part=path"):
        load_any(dst, [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    out = tmp_path / "hr.pt2"
    weights = [w for a in args for w in ("--weights", a)]
    assert main(["export", "-o", str(out), "--size", "64", *weights]) == 0
    assert "weights: loaded" in capsys.readouterr().out
    assert main(["export", "-o", str(out), "--size", "64", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
