"""train-seg under a real ``torchrun``: 2 CPU processes (gloo) all-reduce their gradients into
identical weights and only rank 0 writes; on CUDA a 1-process torchrun smoke with AMP.
(SyncBatchNorm, used on CUDA with more than one process, needs a GPU per process.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fakes import FakeDataset  # noqa: E402
from test_resume_amp import write_pseudo_labels  # noqa: E402

from wsss_fast.engine.paths import RunPaths  # noqa: E402

SCRIPT = """
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
sys.path.insert(0, {tests!r})
from fakes import FakeDataset, fake_builder
import wsss_fast.data
import wsss_fast.seg.train as seg_train
from test_resume_amp import seg_cfg
from wsss_fast.engine.paths import RunPaths
wsss_fast.data.build_dataset = fake_builder({{"train": FakeDataset(8, 1, seed=0, prefix="train")}})
models = []
real = seg_train.model_from_cfg
seg_train.model_from_cfg = lambda *a, **k: models.append(real(*a, **k)) or models[-1]
saves = []
real_save = seg_train.save_checkpoint
seg_train.save_checkpoint = lambda *a, **k: saves.append(1) or real_save(*a, **k)
seg_train.train_seg(seg_cfg({device!r}, epochs=2, amp=True, batch_size=4), RunPaths({out!r}))
digest = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in models[0].parameters())).hexdigest()
sync_bn = any(isinstance(m, torch.nn.SyncBatchNorm) for m in models[0].modules())
with open(os.path.join({out!r}, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({{"digest": digest, "world": int(os.environ["WORLD_SIZE"]), "sync_bn": sync_bn, "saves": len(saves)}}, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])])
def test_train_seg_under_torchrun(tmp_path, device):
    nproc = 2 if device == "cpu" else 1
    out = RunPaths(tmp_path / "run")
    write_pseudo_labels(FakeDataset(8, 1, seed=0, prefix="train"), out)
    script = tmp_path / "train_seg_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT).format(here=str(Path(__file__).parent),
                                                     tests=str(Path(__file__).parents[1]),
                                                     device=device, out=str(out.root)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out.root / f"rank{r}.json").read_text()) for r in range(nproc)]
    assert {r["world"] for r in ranks} == {nproc}
    assert len({r["digest"] for r in ranks}) == 1  # gradients all-reduced: the same weights
    assert not any(r["sync_bn"] for r in ranks)  # CPU (gloo) or one process: plain BatchNorm
    # only rank 0 wrote: last.pt once per epoch, one log line and one printed summary per epoch
    assert [r["saves"] for r in ranks] == [2] + [0] * (nproc - 1)
    log = [json.loads(x) for x in (out.seg / "train.log").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert proc.stdout.count("[train-seg] epoch=2 ") == 1
    assert out.is_done(out.seg) and (out.seg / "final.pt").exists()
    last = torch.load(out.seg / "last.pt", map_location="cpu", weights_only=False)
    assert (last["scaler"] is not None) == (device == "cuda")  # AMP on CUDA only
