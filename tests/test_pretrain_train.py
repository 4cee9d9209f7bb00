"""The pretraining loop: it learns, resumes exactly, splits over ranks, stops on NaN, and
rejects bad configs by name."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from skysense_fast import cli
from skysense_fast.pretrain import (
    ConfigError,
    from_dict,
    load_config,
    pretrain,
    validate,
)
from skysense_fast.train import checkpoint as ckpt

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain", "skysense-tiny.yaml")


def _cfg(out, **overrides):
    # device cpu: also on a GPU machine (2 ranks of the FSDP2 test share the CPU, not one card)
    return load_config(TINY, {"train.out_dir": str(out), "train.progress": False, "train.device": "cpu", **overrides})


def _quiet_run(cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pretrain(cfg, **kw)


def test_tiny_run_learns(tmp_path):
    res = _quiet_run(_cfg(tmp_path, **{"train.steps": 40, "train.checkpoint_every": 0}))
    totals = [r["total"] for r in res["losses"]]
    assert res["status"] == "done" and len(totals) == 40
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in res["losses"])
    first, last = sum(totals[:10]) / 10, sum(totals[-10:]) / 10
    assert last < 0.95 * first, f"total loss did not clearly decrease: {first:.3f} -> {last:.3f}"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(40)) and lines[-1]["total"] == pytest.approx(totals[-1])


def test_resume_gives_the_same_losses(tmp_path):
    full = _quiet_run(_cfg(tmp_path / "a", **{"train.steps": 6, "train.checkpoint_every": 3}))
    part = _quiet_run(_cfg(tmp_path / "b", **{"train.steps": 6, "train.checkpoint_every": 3}), stop_after=4)
    assert part["status"] == "stopped" and part["step"] == 4
    rest = _quiet_run(_cfg(tmp_path / "b", **{"train.steps": 6, "train.checkpoint_every": 3}))   # resumes at 3
    assert [r["step"] for r in rest["losses"]] == [3, 4, 5]
    want = [r["total"] for r in full["losses"][3:]]
    assert [r["total"] for r in rest["losses"]] == pytest.approx(want, rel=1e-6)


def test_dataloader_workers_change_nothing(tmp_path):
    a = _quiet_run(_cfg(tmp_path / "a", **{"train.steps": 3, "train.checkpoint_every": 0}))["losses"]
    b = _quiet_run(_cfg(tmp_path / "b", **{"train.steps": 3, "train.checkpoint_every": 0, "train.num_workers": 2}))
    assert [r["total"] for r in b["losses"]] == pytest.approx([r["total"] for r in a], rel=1e-6)


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    _quiet_run(_cfg(tmp_path, **{"train.steps": 2, "train.checkpoint_every": 1}))
    with pytest.raises(ValueError, match=r"loss\.out_dim: checkpoint 64, config 32"):
        _quiet_run(_cfg(tmp_path, **{"train.steps": 4, "loss.out_dim": 32}))
    assert cli.main(["pretrain", TINY, "--out-dir", str(tmp_path), "--set", "loss.out_dim=32", "--set",
                     "train.device=cpu"]) == 2
    assert "another model" in capsys.readouterr().err
    res = _quiet_run(_cfg(tmp_path, **{"train.steps": 3, "loss.out_dim": 32}), resume=False)  # a fresh start
    assert res["status"] == "done"


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    from skysense_fast.pretrain import objective

    real, calls = objective.info_nce, {"n": 0}

    def poisoned(*a, **k):   # 3 modality pairs x 2 views per step: NaN from step 3 on
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > 18 else out

    monkeypatch.setattr(objective, "info_nce", poisoned)
    cfg = _cfg(tmp_path, **{"train.steps": 8, "train.checkpoint_every": 2})
    with caplog.at_level(logging.WARNING, logger="skysense_fast"):
        res = pretrain(cfg)
    assert any(re.search("cma.*not finite at step 3", r.getMessage()) for r in caplog.records)
    assert res["status"] == "nan" and len(res["losses"]) == 3
    assert ckpt.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("step_00000002")


def test_crash_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, **{"train.steps": 4, "train.checkpoint_every": 2})
    real = ckpt.dcp.save
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(ckpt.dcp, "save", crashing)
    with pytest.raises(OSError, match="disk full"):
        _quiet_run(cfg)
    d = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(str(d)).endswith("step_00000002")
    assert (d / "step_00000004.partial").exists()
    monkeypatch.setattr(ckpt.dcp, "save", real)
    res = _quiet_run(cfg)                       # resumes from step 2, writes 4, clears the partial one
    assert [r["step"] for r in res["losses"]] == [2, 3]
    assert sorted(os.listdir(d)) == ["latest", "step_00000002", "step_00000004"]


def _torchrun(nproc, out, steps=3, extra=()):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, f"--nproc_per_node={nproc}", "-m", "skysense_fast.cli", "pretrain", TINY, "--steps", str(steps),
           "--out-dir", str(out), "--set", "train.checkpoint_every=2", "--set", "train.progress=false", "--set", "train.device=cpu", *extra]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_fsdp2_two_ranks_match_one_process(tmp_path):
    one = _quiet_run(_cfg(tmp_path / "one", **{"train.steps": 3, "train.checkpoint_every": 2}))["losses"]
    two = _torchrun(2, tmp_path / "two")
    for a, b in zip(one, two):
        for k in ("total", "cma", "hr_pixel", "s2_object", "fused_image"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (a["step"], k)
    ck = tmp_path / "two" / "checkpoints" / "step_00000003"
    assert (ck / "rng_rank0.json").exists() and (ck / "rng_rank1.json").exists()
    from safetensors.torch import load_file             # the exported weights: gathered from the shards

    w1, w2 = load_file(tmp_path / "one" / "skysense-tiny.safetensors"), load_file(tmp_path / "two" / "skysense-tiny.safetensors")
    assert w1.keys() == w2.keys() and "geo.prototypes" in w1
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert len([f for f in os.listdir(ck) if f.endswith(".distcp")]) == 2      # one shard file per rank


def test_fsdp2_bf16_params_with_checkpointing(tmp_path):
    """bf16 gathered parameters (MixedPrecisionPolicy) + activation checkpointing on 2 ranks:
    finite, and near the float32 single process (bf16 rounding only)."""
    one = _quiet_run(_cfg(tmp_path / "one", **{"train.steps": 2, "train.checkpoint_every": 0}))["losses"]
    two = _torchrun(2, tmp_path / "two", steps=2, extra=["--set", "train.precision=bfloat16",
                                                         "--set", "train.grad_checkpointing=true"])
    assert all(math.isfinite(r["total"]) for r in two)
    assert two[0]["total"] == pytest.approx(one[0]["total"], rel=2e-2)


@pytest.mark.parametrize("raw, field", [
    ({"loss": {"tempx": 1}}, "loss.tempx"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"train": {"steps": 2.5}}, "train.steps"),
    ({"train": {"grad_checkpointing": "yes"}}, "train.grad_checkpointing"),
    ({"optim": {"betas": [0.9]}}, "optim.betas"),
    ({"data": {"crop": 8, "grid": 6}}, "data.crop"),
    ({"loss": {"object_grid": 5}}, "loss.object_grid"),
    ({"loss": {"student_temp": 0}}, "loss.student_temp"),
    ({"model": {"name": "skysense-7b"}}, "model.name"),
    ({"model": {"overrides": {"not_a_field": 1}}}, "model.overrides"),
    ({"train": {"precision": "float8"}}, "train.precision"),
    ({"schedule": {}}, "schedule"),
    ({"data": [1, 2]}, "data"),
])
def test_bad_config_names_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict(raw)


def test_batch_must_split_over_ranks():
    cfg = from_dict({"train": {"batch_size": 3}})
    with pytest.raises(ConfigError, match=r"train\.batch_size \(3\).*2 ranks"):
        validate(cfg, world_size=2)


def test_cli_pretrain_and_its_errors(tmp_path, capsys):
    assert cli.main(["pretrain", TINY, "--steps", "2", "--out-dir", str(tmp_path), "--set", "train.progress=false",
                     "--set", "train.device=cpu"]) == 0
    assert "pretrain done at step 2" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "latest").exists()
    # the trained weights go straight into embed
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5)) as d:
        d.write(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8).numpy())
    assert cli.main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "f.tif"), "--tile", "64", "--overlap", "0",
                     "--weights", str(tmp_path / "skysense-tiny.safetensors"), "--features", "geo"]) == 0
    assert "weights: loaded" in capsys.readouterr().out
    assert cli.main(["pretrain", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["pretrain", TINY, "--set", "loss.colour=1"]) == 2
    assert "loss.colour" in capsys.readouterr().err
    assert cli.main(["pretrain", TINY, "--set", "steps=3"]) == 2
    assert "SECTION.FIELD=VALUE" in capsys.readouterr().err


def test_example_configs_parse(tmp_path):
    import numpy as np
    import rasterio
    import yaml

    # the data `make sample` prepares may be missing (a fresh clone): a stand-in manifest then
    img = (np.random.default_rng(0).random((3, 200, 200)) * 255).astype(np.uint8)
    with rasterio.open(tmp_path / "a.png", "w", driver="PNG", height=200, width=200, count=3, dtype="uint8") as d:
        d.write(img)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump([{"hr": "a.png", "latlon": [44.9, -110.6]}]))
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain")
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name)) as f:
            manifest = (yaml.safe_load(f).get("data") or {}).get("manifest")
        stand_in = {"data.manifest": str(tmp_path / "m.yaml")} if manifest and not os.path.exists(manifest) else None
        cfg = load_config(os.path.join(root, name), stand_in)
        assert cfg.train.steps >= 1


def test_bf16_autocast_and_checkpointing_run(tmp_path):
    cfg = _cfg(tmp_path, **{"train.steps": 2, "train.checkpoint_every": 0, "train.precision": "bfloat16",
                            "train.grad_checkpointing": True})
    res = _quiet_run(cfg)
    assert res["status"] == "done"
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in res["losses"])


@pytest.mark.gpu
def test_pretrain_tiny_on_cuda(tmp_path):
    """The whole step on a GPU (device placement of views, centres, bank, Sinkhorn, EMA),
    float32 and bf16; close to the CPU's first loss."""
    cpu = _quiet_run(_cfg(tmp_path / "cpu", **{"train.steps": 2, "train.checkpoint_every": 0}))["losses"]
    for precision in ("float32", "bfloat16"):
        res = _quiet_run(_cfg(tmp_path / precision, **{"train.steps": 2, "train.checkpoint_every": 0,
                                                       "train.device": "cuda", "train.precision": precision}))
        assert res["status"] == "done"
        assert res["losses"][0]["total"] == pytest.approx(cpu[0]["total"], rel=2e-2 if precision == "bfloat16" else 1e-3)


def test_multi_crop_local_views(tmp_path):
    base = _quiet_run(_cfg(tmp_path / "a", **{"train.steps": 2, "train.checkpoint_every": 0}))["losses"]
    local = _quiet_run(_cfg(tmp_path / "b", **{"train.steps": 2, "train.checkpoint_every": 0, "data.local_crops": 2,
                                                "data.local_crop": 2}))["losses"]
    assert all(math.isfinite(r["total"]) for r in local)
    # the local views enter the image level only; pixel and object levels are the global pairs'
    assert local[0]["hr_pixel"] == pytest.approx(base[0]["hr_pixel"], rel=1e-6)
    assert local[0]["hr_image"] != pytest.approx(base[0]["hr_image"], rel=1e-6)
    with pytest.raises(ConfigError, match=r"data\.local_crop \(5\)"):
        from_dict({"data": {"local_crops": 2, "local_crop": 5}})
