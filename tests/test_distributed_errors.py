"""A rank that fails (bad data) stops every rank instead of leaving them waiting in a collective:
``distributed.agree`` under a real two-rank torchrun (gloo), with a timeout that catches a hang."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

SCRIPT = '''
import os
import torch.distributed as dist
from skysense_fast import distributed
from skysense_fast.errors import InputError

rank, world = distributed.init()
distributed.agree(None, "step 0")                       # nobody failed: everyone goes on
try:
    distributed.agree(ValueError("bad window") if rank == 1 else None, "validation")
    said = f"rank {rank}: went on"
except (ValueError, InputError) as e:
    said = f"rank {rank}: {type(e).__name__}: {e}"
with open(os.path.join(os.environ["OUT"], f"rank{rank}.txt"), "w") as f:   # one file a rank: stdout interleaves
    f.write(said)
dist.barrier()                                          # both reached here: nobody hung
dist.destroy_process_group()
'''


def test_one_failing_rank_stops_both(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(SCRIPT)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", str(script)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [(tmp_path / f"rank{k}.txt").read_text() for k in (0, 1)]
    assert lines == ["rank 0: InputError: validation: another rank failed (its message says why); rank 0 stops too",
                     "rank 1: ValueError: bad window"]
