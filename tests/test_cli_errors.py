"""Bad input on the command line: a non-zero exit, one line naming the input, no traceback,
and the output path as it was before (absent, or the old file unchanged)."""

from __future__ import annotations

import os

import pytest
import torch

from skysense_fast.cli import main

from bad_geotiffs import corpus
from test_infer import write_scene


@pytest.fixture
def scene(tmp_path):
    write_scene(tmp_path / "s.tif", 64, 64)
    return tmp_path / "s.tif"


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


CASES = {
    "batch size 0": (lambda t, s: ["embed", s, "-o", t / "f.tif", "--batch-size", "0"], "--batch-size must be >= 1"),
    "batch size -1": (lambda t, s: ["embed", s, "-o", t / "f.tif", "--batch-size", "-1"], "--batch-size must be >= 1"),
    "output folder missing": (lambda t, s: ["embed", s, "-o", t / "no" / "f.tif"], "does not exist"),
    "output is a folder": (lambda t, s: ["embed", s, "-o", t], "is a directory"),
    "junk weights": (lambda t, s: ["embed", s, "-o", t / "f.tif", "--weights", t / "junk.pth"],
                     "neither a safetensors file nor a torch checkpoint"),
    "corrupt safetensors": (lambda t, s: ["embed", s, "-o", t / "f.tif", "--weights", t / "bad.safetensors"],
                            "bad.safetensors"),
    "truncated geotiff": (lambda t, s: ["embed", t / "cut.tif", "-o", t / "f.tif"], "cut.tif"),
    "dates without series": (lambda t, s: ["embed", s, "-o", t / "f.tif", "--s2-dates", "2020-01-01"],
                             "--s2-dates given without --s2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_the_output_alone(case, scene, tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    (tmp_path / "bad.safetensors").write_bytes((8).to_bytes(8, "little") + b"{not json")
    (tmp_path / "cut.tif").write_bytes(scene.read_bytes()[:300])
    (tmp_path / "f.tif").write_bytes(b"previous output")
    argv, message = CASES[case]
    code, err = _run(capsys, argv(tmp_path, scene))
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "f.tif").read_bytes() == b"previous output"
    assert not (tmp_path / "f.tif.partial").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(scene, tmp_path, capsys):
    code, err = _run(capsys, ["embed", scene, "-o", tmp_path / "f.tif", "--device", "cuda"])
    assert code == 2 and "no CUDA device is visible" in err and "Traceback" not in err


def test_failed_export_leaves_nothing(tmp_path, capsys, monkeypatch):
    """export left <out>.partial behind on failure."""
    def failing(*a, **k):
        raise ValueError("export failed on purpose")

    monkeypatch.setattr(torch.export, "save", failing)
    out = tmp_path / "hr.pt2"
    code, err = _run(capsys, ["export", "-o", out, "--size", "64"])
    assert code == 2 and "export failed on purpose" in err
    assert not out.exists() and not os.path.exists(f"{out}.partial")


def test_a_bug_keeps_its_traceback(scene, tmp_path, monkeypatch):
    """Anything that is not bad input is reported as a bug, with its traceback."""
    import skysense_fast.infer as infer

    def broken(*a, **k):
        raise KeyError("an internal bug")

    monkeypatch.setattr(infer, "embed_scene", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["embed", str(scene), "-o", str(tmp_path / "f.tif")])


def test_out_of_memory_names_what_to_lower(scene, tmp_path, capsys, monkeypatch):
    import skysense_fast.infer as infer

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(infer, "embed_scene", oom)
    code, err = _run(capsys, ["embed", scene, "-o", tmp_path / "f.tif", "--tile", "64", "--batch-size", "8"])
    assert code == 2 and "--tile 64 --batch-size 8: lower --batch-size" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["embed", "predict"])
@pytest.mark.parametrize("case", ["empty file", "truncated", "not a tiff", "header only", "one band"])
def test_bad_geotiffs_are_one_line(case, command, tmp_path, capsys):
    """Each file of the seeded corpus: exit 2, one line naming the file, nothing written."""
    path, _ = corpus(tmp_path)[case]
    task = []
    if command == "predict":
        from skysense_fast.finetune import TaskSpec, build_task_model, save_task

        save_task(build_task_model(TaskSpec("segmentation", (1, 2), ("a", "b"), head_channels=8)), tmp_path / "t.st")
        task = ["--task", tmp_path / "t.st"]
    code, err = _run(capsys, [command, path, "-o", tmp_path / "f.tif", *task])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert path.rsplit("/", 1)[-1] in err, err
    assert not (tmp_path / "f.tif").exists()


@pytest.mark.parametrize("argv, message", [
    (["export", "-o", "{t}/x.pt2", "--size", "0"], "--size must be >= 1"),
    (["export", "-o", "{t}/x.pt2", "--size", "48"], "multiple of 32"),
    (["export", "-o", "{t}/no/x.pt2"], "does not exist"),
    (["convert", "-o", "{t}/w.safetensors"], "give the official weights"),
    (["pretrain", "{t}/missing.yaml"], "missing.yaml"),
    (["pretrain", "{cfg}", "--set", "optim.lr=.inf"], "optim.lr must be a finite number"),
    (["pretrain", "{cfg}", "--steps", "0"], "--steps must be >= 1"),
    (["finetune", "{ft}", "--set", "data.image={t}/none.tif"], "data.image: no such file"),
    (["finetune", "{ft}", "--set", "task.kind=panoptic"], "task.kind must be one of"),
    (["finetune", "{ft}", "--set", "nonsense"], "--set takes SECTION.FIELD=VALUE"),
    (["finetune", "{ft}", "--out-dir", "{cfg}"], "is a file"),
    (["predict", "{t}/none.tif", "-o", "{t}/m.tif", "--task", "{t}/t.safetensors"], "none.tif"),
    (["evaluate", "--task", "{t}/t.safetensors"], "give either --image and --labels"),
    (["evaluate", "--task", "{t}/t.safetensors", "--image", "{t}/x.tif"], "--image needs --labels"),
    (["sinkhorn-demo", "--prototypes", "-3"], "--prototypes must be >= 1"),
    (["sinkhorn-demo", "--samples", "0"], "--samples must be >= 1"),
    (["bench", "--scale", "0"], "--scale must be >= 1"),
    (["demo", "--out-dir", "{cfg}"], "is a file"),
])
def test_other_commands_bad_input(argv, message, tmp_path, capsys):
    cfg = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain", "skysense-tiny.yaml")
    ft = os.path.join(os.path.dirname(__file__), "..", "configs", "finetune", "segmentation-tiny.yaml")
    code, err = _run(capsys, [a.format(t=tmp_path, cfg=cfg, ft=ft) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
