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


PREFIX = {"hr": "backbone_gep.", "s2": "backbone_s2.", "s1": "backbone_s1.", "fusion": "fusion.",
          "head_s2": "head_s2.", "head_s1": "head_s1."}


def full_checkpoint(src):
    """One official full checkpoint: every part's keys under its branch prefix, + ctpe."""
    full = {PREFIX[p] + k.removeprefix("backbone."): v for p, sd in official_files(src).items() for k, v in sd.items()
            if k != "ctpe"}
    full["ctpe"] = src.ctpe.ctpe.detach().clone()
    return full


def test_full_checkpoint_round_trip():
    src, dst = fresh(0), fresh(1)
    load_official(dst, {"model": full_checkpoint(src)})
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


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, before):
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


def test_a_failed_load_changes_nothing(tmp_path):
    """A strict load that failed had already overwritten part of the model (158 tensors)."""
    src, dst = fresh(0), fresh(1)
    before = _snapshot(dst)
    files = official_files(src)
    files["fusion"]["layers.0.extra.weight"] = torch.zeros(1)  # unexpected key in the last part
    with pytest.raises(ValueError, match="unexpected"):
        load_official(dst, files)
    _unchanged(dst, before)
    files = official_files(src)
    files["head_s1"][next(iter(files["head_s1"]))] = torch.zeros(3)  # a wrong shape, late
    with pytest.raises(ValueError, match="shape"):
        load_official(dst, files)
    _unchanged(dst, before)
    sd = {k: v for k, v in src.state_dict().items()}
    sd.pop(next(iter(sd)))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors",
              metadata={"skysense_config": "{}"})
    with pytest.raises(ValueError, match="missing"):
        load_weights(dst, tmp_path / "w.safetensors")
    _unchanged(dst, before)


@pytest.mark.parametrize("damage", ["nan", "inf", "int32"])
def test_corrupt_tensors_are_refused(damage):
    """All-NaN, infinite or integer tensors in place of float weights were accepted."""
    src, dst = fresh(0), fresh(1)
    before = _snapshot(dst)
    files = official_files(src)
    key = next(k for k, v in files["s1"].items() if v.is_floating_point() and v.dim() == 2)
    t = files["s1"][key]
    files["s1"][key] = (torch.full_like(t, float("nan")) if damage == "nan" else
                        t.index_fill(0, torch.tensor([0]), float("inf")) if damage == "inf" else t.to(torch.int32))
    with pytest.raises(ValueError, match=f"s1.{key}: .*(NaN or infinite|int32)"):
        load_official(dst, files)
    _unchanged(dst, before)


def test_file_format_is_read_from_the_bytes(tmp_path):
    """`.SAFETENSORS` or misnamed files went to torch.load; a path with '=' was a part=path."""
    from skysense_fast.weights import load_any

    src = fresh(0)
    save_weights(src, tmp_path / "W.SAFETENSORS")
    (tmp_path / "run=3").mkdir()
    save_weights(src, tmp_path / "run=3" / "weights.bin")
    for path in (tmp_path / "W.SAFETENSORS", tmp_path / "run=3" / "weights.bin"):
        dst = fresh(1)
        assert "loaded" in load_any(dst, str(path))
        same_weights(src, dst)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither a safetensors file nor a torch checkpoint"):
        load_any(fresh(1), str(tmp_path / "junk.pth"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "W.SAFETENSORS").read_bytes()[:100])
    with pytest.raises(ValueError, match="neither a safetensors"):
        load_any(fresh(1), str(tmp_path / "cut.safetensors"))


def test_official_checkpoints_in_every_form():
    """head_gep / other head keys of a full checkpoint refused the load (the official converter
    drops them); split files whose keys keep their own prefix loaded zero tensors; the RGBNIR
    model (4-band HR) had no path from the RGB weights."""
    src, dst = fresh(0), fresh(1)
    full = full_checkpoint(src)
    full["head_gep.proj.weight"] = torch.zeros(4, 4)
    full["head.mlp.0.bias"] = torch.zeros(4)
    report = load_official(dst, {"model": full})
    assert not report.unexpected and "head_gep.proj.weight (a pretraining head)" in report.ignored
    same_weights(src, dst)
    dst = fresh(2)
    files = {p: {PREFIX[p] + k.removeprefix("backbone."): v for k, v in sd.items()}
             for p, sd in official_files(src).items()}
    report = load_official(dst, files)
    assert not report.missing and report.loaded["fusion"] == len(src.fusion.state_dict())
    same_weights(src, dst)
    nir = fresh(3, hr_in_chans=4)
    report = load_official(nir, official_files(src))
    w = nir.hr.state_dict()["patch_embed.projection.weight"]
    assert torch.equal(w[:, :3], src.hr.state_dict()["patch_embed.projection.weight"]) and torch.equal(w[:, 3], w[:, 0])
    assert any("RGBNIR" in c for c in report.converted)


def test_convert_official_weights_once(tmp_path, capsys):
    """`skysense-fast convert`: the official .pth files become one safetensors file that
    --weights takes (no pickle read again)."""
    from skysense_fast.cli import main
    from skysense_fast.weights import load_any

    src = models.create("skysense-tiny")
    args = []
    for part, sd in official_files(src).items():
        torch.save(sd, tmp_path / f"{part}.pth")
        args += ["--weights", f"{part}={tmp_path / f'{part}.pth'}"]
    out = tmp_path / "tiny.safetensors"
    assert main(["convert", "-o", str(out), *args]) == 0
    dst = fresh(5)
    load_any(dst, str(out))
    same_weights(src, dst)
    assert main(["convert", "-o", str(tmp_path / "x.bin"), *args]) == 2
    assert "must name a .safetensors file" in capsys.readouterr().err


def test_hr_stages_load_strict_with_the_earlier_norms_at_init():
    """A dense-head model (HR stages 0-3) loads a released HR file (norm3 only) strictly:
    norm0-norm2 are reported as left at init, everything else is the file's."""
    src = fresh(0)
    dst = fresh(1, hr_stages=(0, 1, 2, 3))
    init = {k: v.clone() for k, v in dst.hr.state_dict().items() if k.startswith(("norm0", "norm1", "norm2"))}
    report = load_official(dst, {"hr": official_files(src)["hr"]})
    assert not report.missing and not report.unexpected
    assert sorted(report.at_init) == sorted(f"hr.norm{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    assert "at_init (6)" in str(report)
    for k, v in dst.hr.state_dict().items():
        expect = init[k] if k in init else src.hr.state_dict()[k]
        assert torch.equal(v, expect), k
    with pytest.raises(ValueError, match=r"missing \(2\): hr.norm3.weight, hr.norm3.bias"):  # the file's own
        load_official(dst, {"hr": {k: v for k, v in official_files(src)["hr"].items()
                                   if not k.startswith("backbone.norm3")}})


def test_own_weights_start_a_dense_task_whose_hr_stages_differ(tmp_path):
    """Pretraining writes the backbone with the fusion's HR output only; a segmentation task
    returns HR stages 0-3. The shared weights load, the extra output norms stay at init and
    are named (this was refused as 'another config')."""
    from skysense_fast.finetune.task import TaskSpec, build_task_model

    src = fresh(5)
    save_weights(src, tmp_path / "pre.safetensors")
    task = build_task_model(TaskSpec("segmentation", (1, 2), ("a", "b"), head_channels=8),
                            weights=str(tmp_path / "pre.safetensors"))
    assert "left at init (6): hr.norm0.weight" in task.load_report
    for k, v in src.hr.state_dict().items():
        assert torch.equal(task.backbone.hr.state_dict()[k], v), k
    back = fresh(6)                                    # and the other way: a task's backbone into a plain model
    save_weights(task.backbone, tmp_path / "task_backbone.safetensors")
    load_weights(back, tmp_path / "task_backbone.safetensors")
    mine = back.state_dict()
    for k, v in task.backbone.state_dict().items():
        if k in mine and not k.startswith("geo."):
            assert torch.equal(mine[k], v), k
    assert not any(k.startswith(("hr.norm0", "hr.norm1", "hr.norm2")) for k in mine)   # dropped: not outputs here
    with pytest.raises(ValueError, match="another config"):
        load_weights(models.create("skysense-tiny", vit_depth=1), tmp_path / "pre.safetensors")
