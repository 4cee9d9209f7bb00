"""Hugging Face-style weights folders: save_pretrained / from_pretrained, the model card, the
folder (or hub id) wherever weights are taken, and bad folders refused before anything is built."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import skysense_fast
from skysense_fast import models
from skysense_fast.data.normalisation import Normalisation
from skysense_fast.finetune import load_task
from skysense_fast.finetune.task import TaskSpec, build_task_model
from skysense_fast.weights import load_any


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = models.create("skysense-tiny").eval()
    m.normalisation = dataclasses.replace(Normalisation(), hr_mean=(100.0, 110.0, 120.0))
    return m


def _features(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hr = torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        return model(hr=hr, latlon=torch.tensor([[40.0, 10.0]]))["fused"]


def test_save_then_load_gives_the_same_model(tmp_path):
    src = _model()
    folder = skysense_fast.save_pretrained(src, tmp_path / "tiny", license="cc-by-4.0", description="A test.")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    loaded = skysense_fast.from_pretrained(folder)
    assert isinstance(loaded, models.SkySense) and not loaded.training
    assert loaded.config == src.config and loaded.normalisation == src.normalisation
    torch.testing.assert_close(_features(loaded), _features(src), rtol=0, atol=0)
    meta = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert meta["format"] == "skysense_fast" and meta["format_version"] == 1 and meta["task"] is None
    assert meta["bands"]["s2"][0] == "B2" and meta["normalisation"]["hr_mean"] == [100.0, 110.0, 120.0]
    card = (tmp_path / "tiny" / "README.md").read_text()
    params = sum(p.numel() for p in src.parameters())
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "A test." in card
    assert f"{params / 1e6:,.1f} M parameters" in card and "| hr | red | 100 | 58.395 |" in card
    assert "@inproceedings{guo2024skysense" in card and "not of the skysense_fast code" in card


def test_a_card_without_a_licence_says_so(tmp_path):
    skysense_fast.save_pretrained(_model(), tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "license: other" in card and "Not stated by whoever saved these weights" in card


def test_a_task_model_round_trips_and_loads_as_a_task(tmp_path):
    torch.manual_seed(0)
    task = build_task_model(TaskSpec("segmentation", (3, 7), ("water", "field"), head_channels=8)).eval()
    skysense_fast.save_pretrained(task, tmp_path / "seg", license="mit")
    back = skysense_fast.from_pretrained(tmp_path / "seg")
    also = load_task(tmp_path / "seg")      # what predict --task takes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = task(x)
        torch.testing.assert_close(back(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(also(x), ref, rtol=0, atol=0)
    assert back.spec == task.spec
    card = (tmp_path / "seg" / "README.md").read_text()
    assert "image-segmentation" in card and "3 water, 7 field" in card and "--task FOLDER" in card


def test_the_folder_is_taken_as_weights_by_load_any_and_the_cli(tmp_path, capsys):
    from skysense_fast.cli import main

    src = _model(3)
    skysense_fast.save_pretrained(src, tmp_path / "w")
    dst = _model(4)
    load_any(dst, str(tmp_path / "w"))
    torch.testing.assert_close(_features(dst), _features(src), rtol=0, atol=0)
    out = tmp_path / "hr.pt2"
    assert main(["export", "-o", str(out), "--size", "64", "--weights", str(tmp_path / "w")]) == 0
    assert "weights: loaded" in capsys.readouterr().out and out.exists()
    # --config that contradicts the folder's is refused; the folder's task needs --task
    assert main(["export", "-o", str(out), "--weights", str(tmp_path / "w"), "--config", "skysense-base"]) == 2
    assert "another config" in capsys.readouterr().err
    skysense_fast.save_pretrained(build_task_model(TaskSpec("segmentation", (1, 2), ("a", "b"), head_channels=8)),
                                  tmp_path / "t")
    assert main(["export", "-o", str(out), "--weights", str(tmp_path / "t")]) == 2
    assert "give it as --task" in capsys.readouterr().err


def test_cli_save_pretrained_never_replaces_its_input(tmp_path, capsys):
    from skysense_fast.cli import main

    assert main(["save-pretrained", "-o", str(tmp_path / "a"), "--license", "apache-2.0"]) == 0
    assert "config.json, README.md" in capsys.readouterr().out
    before = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert main(["save-pretrained", "-o", str(tmp_path / "a"), "--weights", str(tmp_path / "a")]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == before
    assert main(["save-pretrained", "-o", str(tmp_path / "b"), "--weights", str(tmp_path / "a")]) == 0
    a, b = (load_file(tmp_path / f / "model.safetensors") for f in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _corrupt(folder, **changes):
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        target = meta
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format version 99"),
    ({"format": "other"}, "is not a skysense_fast config"),
    ({"model.hr_embed_dim": 10**6}, "do not match the model its config describes"),   # never built
    ({"model.hr_depths": "two"}, "hr_depths"),
    ({"model.no_such_field": 1}, "unknown field"),
    ({"model.hr_depths": [2, 2, 2, 200000]}, "more than the file's"),     # refused before even a meta build
    ({"model.vit_dim": -32}, "vit_dim must be a positive integer"),
    ({"model.date_embedding": ["abc"]}, "date_embedding names modalities"),
])
def test_bad_folders_are_refused_by_name(tmp_path, change, message):
    skysense_fast.save_pretrained(_model(), tmp_path / "m")
    _corrupt(tmp_path / "m", **change)
    with pytest.raises(ValueError, match=message):
        skysense_fast.from_pretrained(tmp_path / "m")


def test_folders_that_are_not_pretrained_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        skysense_fast.from_pretrained(tmp_path / "empty")
    skysense_fast.save_pretrained(_model(), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        skysense_fast.from_pretrained(tmp_path / "m")
    skysense_fast.save_pretrained(_model(), tmp_path / "n")
    os.unlink(tmp_path / "n" / "model.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors"):
        skysense_fast.from_pretrained(tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="weights not found"):
        skysense_fast.from_pretrained(tmp_path / "missing" / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        skysense_fast.save_pretrained(_model(), tmp_path / "file")


_HUB_SCRIPT = """
import sys, torch, skysense_fast
try:
    skysense_fast.from_pretrained("nobody/not-cached")
except ValueError as e:
    print("refused:", e)
m = skysense_fast.from_pretrained("someone/skysense-tiny-test")
torch.save(m.state_dict(), sys.argv[1])
"""


def test_a_hub_id_resolves_from_the_cache_offline(tmp_path):
    """A repository id goes through huggingface_hub (offline here: from its cache, laid out as
    a download leaves it), in a fresh process with the user's environment variables."""
    src = _model(5)
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--someone--skysense-tiny-test"
    skysense_fast.save_pretrained(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, str(tmp_path / "sd.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refused: nobody/not-cached: not a local path, and the hub repository is not in the local cache" \
        in out.stdout
    got = torch.load(tmp_path / "sd.pt", weights_only=True)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    shutil.rmtree(tmp_path / "cache")
