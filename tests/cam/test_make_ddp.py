"""make-cam under a real ``torchrun`` (2 CPU processes): each rank writes its shard (images
``i % 2 == RANK``), the last one to finish marks the step done, and together they write what
one process writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsss_fast.cam.make import make_cam
from wsss_fast.data import build_dataset
from wsss_fast.engine.paths import RunPaths

from .test_make_resume import assert_same_cams, cam_cfg, write_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = """
import importlib.util, sys
import torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("cam_resume_test", {helpers!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from wsss_fast.cam.make import make_cam
from wsss_fast.engine.paths import RunPaths
make_cam(mod.cam_cfg({data_root!r}), RunPaths({out!r}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: Path, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --nproc_per_node nproc`` (one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           f"--master_port={free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_make_cam_under_torchrun_shards_over_ranks(tmp_path, tmp_path_factory):
    data_root = tmp_path_factory.mktemp("synthetic_ddp")
    cfg = cam_cfg(data_root)
    ref = RunPaths(tmp_path / "ref")
    write_classifier(cfg, ref)
    make_cam(cfg, ref)  # also writes the synthetic set once, before the ranks read it

    out = RunPaths(tmp_path / "ddp")
    write_classifier(cfg, out)
    script = tmp_path / "make_cam_ddp.py"
    helpers = Path(__file__).with_name("test_make_resume.py")
    script.write_text(textwrap.dedent(SCRIPT).format(helpers=str(helpers), data_root=str(data_root),
                                                     out=str(out.root)))
    proc = torchrun(script)
    log = proc.stdout + proc.stderr
    n_train = len(build_dataset(cfg, "train", ref, train=False).image_ids)
    # each rank did its half of every split
    assert "make-cam train [shard 0/2]" in log and "make-cam train [shard 1/2]" in log
    assert f"{n_train // 2}/{n_train // 2}" in log
    assert out.is_done(out.cam)
    assert_same_cams(ref, out, atol=2e-3)  # batches differ (shards), so do the roundings
