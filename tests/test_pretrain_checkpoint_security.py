"""Nothing a resume reads executes code: a payload planted in any file of a checkpoint folder
is refused (or never read), and ``latest`` cannot lead out of the run folder."""

from __future__ import annotations

import builtins
import logging
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from skysense_fast.train import checkpoint as ckpt
from skysense_fast.pretrain import pretrain
from skysense_fast.train.checkpoint_reader import SafeLoadPlanner, SafeReader

from test_pretrain_train import _cfg


class Payload:
    """Unpickling this creates `marker`: proof that the reader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _run(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pretrain(cfg)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step run with a checkpoint at step 2 (copied per test)."""
    out = tmp_path_factory.mktemp("run")
    _run(_cfg(out, **{"train.steps": 2, "train.checkpoint_every": 2}))
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _resume(run):
    return _run(_cfg(run, **{"train.steps": 4, "train.checkpoint_every": 2}))


def test_resume_reads_no_pickles_of_its_own(run):
    step = run / "checkpoints" / "step_00000002"
    assert (step / "trainer.json").exists() and (step / "rng_rank0.json").exists()
    assert not list(step.glob("*.pt"))
    marker = run / "pwned"
    for name in ("trainer.pt", "rng_rank0.pt"):  # the old format's files: planted, never read
        (step / name).write_bytes(pickle.dumps(Payload(marker)))
    res = _resume(run)
    assert [r["step"] for r in res["losses"]] == [2, 3] and not marker.exists()


def test_planted_metadata_pickle_is_refused(run):
    marker = run / "pwned"
    (run / "checkpoints" / "step_00000002" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(RuntimeError, match="cannot resume from .*step_00000002: .*names io.open, which no "):
        _resume(run)
    assert not marker.exists()


def test_planted_byte_item_is_refused(tmp_path):
    """Non-tensor items of a distributed checkpoint (optimiser settings, ...) are pickles that
    torch loads with weights_only=False; the safe planner vets them first."""
    marker = tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(3), "setting": Payload(marker)}, checkpoint_id=str(tmp_path / "ck"))
        assert not marker.exists()
        state = {"w": torch.zeros(3), "setting": None}
        with pytest.raises(BaseException, match="'setting' is not plain data"):  # dcp's CheckpointException
            dcp.load(state, storage_reader=SafeReader(str(tmp_path / "ck")), planner=SafeLoadPlanner())
        assert not marker.exists()
        dcp.load({"w": torch.zeros(3), "setting": None}, checkpoint_id=str(tmp_path / "ck"))
        assert marker.exists()  # the payload is live: torch's own planner runs it
        ok = {"w": torch.zeros(3), "lr": 0.5}  # plain data loads
        dcp.save({"w": torch.ones(3), "lr": 0.25}, checkpoint_id=str(tmp_path / "ok"))
        dcp.load(ok, storage_reader=SafeReader(str(tmp_path / "ok")), planner=SafeLoadPlanner())
    assert ok["lr"] == 0.25 and torch.equal(ok["w"], torch.ones(3))


@pytest.mark.parametrize("pointer", ["../elsewhere", "/etc", "step_00000002/../../x", "step_2"])
def test_latest_cannot_leave_the_run_folder(run, pointer):
    (run / "checkpoints" / "latest").write_text(pointer + "\n")
    with pytest.raises(RuntimeError, match="must name a checkpoint folder"):
        ckpt.latest_checkpoint(str(run / "checkpoints"))


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    """A corrupt latest checkpoint was a traceback; metrics.jsonl repeated the replayed steps."""
    out = tmp_path / "run"
    _run(_cfg(out, **{"train.steps": 4, "train.checkpoint_every": 2}))      # checkpoints 2 and 4
    (out / "checkpoints" / "step_00000004" / ".metadata").write_bytes(b"\x80\x04garbage")
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="skysense_fast"):
        warnings.simplefilter("ignore", UserWarning)
        res = pretrain(_cfg(out, **{"train.steps": 6, "train.checkpoint_every": 2}))
    logs = [r.getMessage() for r in caplog.records]
    assert [r["step"] for r in res["losses"]] == [2, 3, 4, 5]                 # resumed at 2
    assert any("cannot resume from" in line and "step_00000004" in line for line in logs), logs
    import json

    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6)), steps                                    # no step twice


def test_non_finite_config_numbers_are_refused(tmp_path):
    from skysense_fast.pretrain import ConfigError

    for field in ("optim.lr", "loss.teacher_temp"):
        with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
            _cfg(tmp_path, **{field: float("inf")})
    with pytest.raises(ConfigError, match="optim.betas\\[1\\] must be a finite number"):
        _cfg(tmp_path, **{"optim.betas": [0.9, float("nan")]})
