"""Step-1 training: loss goes down, checkpoints, resume, sampler sharding, DDP (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import wsss_fast.cls.train as cls_mod
from wsss_fast.config import load_config
from wsss_fast.engine.paths import RunPaths
from wsss_fast.data.sampler import GlobalBatchSampler as EpochBatchSampler
from wsss_fast.cls.model import load_classifier
from wsss_fast.cls.train import build_optimizer, build_scheduler, fit_classifier
from wsss_fast.engine.dist import DistContext


class TinyDataset(Dataset):
    """Noise images; class c is present when a bright square sits in quadrant c (multi-label)."""

    def __init__(self, n: int = 16, size: int = 16, num_classes: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.3
        self.labels = (torch.rand(n, num_classes, generator=g) < 0.5).float().numpy()
        self.labels[0], self.labels[1] = 1.0, 0.0
        half = size // 2
        for i in range(n):
            for c in range(num_classes):
                if self.labels[i, c]:
                    y0 = (c // 2) * half + int(torch.randint(0, half - 3, (1,), generator=g))
                    x0 = (c % 2) * half + int(torch.randint(0, half - 3, (1,), generator=g))
                    self.images[i, :, y0:y0 + 4, x0:x0 + 4] += 2.0
        self.image_ids = [f"img{i:03d}" for i in range(n)]
        self.class_names = [f"c{c}" for c in range(num_classes)]
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        if torch.rand(()) < 0.5:  # a random flip draws from the global RNG like real augmentation
            x = x.flip(-1)
        return {"image": x, "label": torch.from_numpy(self.labels[i]), "image_id": self.image_ids[i]}


def tiny_cfg(*overrides: str) -> dict:
    base = ["device=cpu", "num_workers=0", "seed=3", "cls.arch=resnet18", "cls.head_channels=16",
            "cls.batch_size=8", "cls.lr=1.0e-3", "cls.amp=false", "cls.dropblock.block_size=3",
            "cls.dropblock.p=0.1", "sampler.neg_pos_ratio=null", "dataset.num_classes=1",
            "cls.epochs=2", "cls.log_every=1"]
    return load_config(None, base + list(overrides))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_reduces_loss_and_writes_outputs(tmp_path):
    paths = RunPaths(tmp_path)
    cfg = tiny_cfg("cls.epochs=4", "cls.weight_decay=0", "cls.pos_weight=1.5")
    out = fit_classifier(cfg, paths, TinyDataset(16, seed=0), TinyDataset(8, seed=1))
    hist = out["history"]
    assert len(hist) == 4 and out["epochs_run"] == 4
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert {"train_f1", "val_f1", "val_loss", "lr", "img_per_s"} <= set(hist[0])
    assert hist[-1]["lr"] < hist[0]["lr"]  # poly schedule
    # stepped per iteration (2 batches of 8 per epoch, 8 in all), not per epoch
    assert [h["lr"] for h in hist] == pytest.approx([1e-3 * (1 - 2 * e / 8) ** 0.9 for e in (1, 2, 3, 4)])
    assert out["best_f1"] == max(h["val_f1"] for h in hist)
    for name in ("last.pt", "best.pt", "train.log", ".done"):
        assert (paths.cls / name).exists(), name
    log = [json.loads(x) for x in (paths.cls / "train.log").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["arch"] == "resnet18" and log[-1]["event"] == "done"
    assert log[0]["ddp"] is None and log[0]["processes"] == 1  # started without torchrun: no process group
    assert [r["epoch"] for r in log if "train_loss" in r] == [1, 2, 3, 4]
    assert log[-1]["best_f1"] == pytest.approx(out["best_f1"])
    best = torch.load(paths.cls / "best.pt", weights_only=True)
    assert best["epoch"] == out["best_epoch"] and best["f1"] == pytest.approx(out["best_f1"])
    model = load_classifier(paths.cls / "best.pt")
    assert not model.training and model.arch == "resnet18"
    torch.testing.assert_close(model.state_dict()["classifier.weight"], best["model"]["classifier.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")


def test_without_val_split_the_last_epoch_is_best(tmp_path, monkeypatch):
    """cls.val_split null: best.pt is the last epoch (not the epoch of best training F1)."""
    import wsss_fast.cls.train as cls_mod

    f1s = iter([0.9, 0.2, 0.5])  # the training F1 peaks in the first epoch
    real = cls_mod._train_one_epoch

    def fake_epoch(*args, **kwargs):
        return {**real(*args, **kwargs), "f1": next(f1s)}

    monkeypatch.setattr(cls_mod, "_train_one_epoch", fake_epoch)
    paths = RunPaths(tmp_path)
    out = fit_classifier(tiny_cfg("cls.epochs=3"), paths, TinyDataset(16, seed=0), None)
    assert out["best_epoch"] == 3 and out["best_f1"] == pytest.approx(0.5)
    assert torch.load(paths.cls / "best.pt", weights_only=True)["epoch"] == 3


class _Interrupt(Exception):
    pass


class _BreakAfter:
    """A loader that raises after ``n`` batches: an interruption in the middle of an epoch."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                raise _Interrupt()
            yield batch


def _crash_in_epoch_two(monkeypatch):
    """Make fit_classifier stop with _Interrupt after one batch of its second epoch; returns the
    real _train_one_epoch, to put back before resuming."""
    real = cls_mod._train_one_epoch
    calls = []

    def interrupted(model, loader, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # second epoch: one batch, then the "crash"
            loader = _BreakAfter(loader, 1)
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(cls_mod, "_train_one_epoch", interrupted)
    return real


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny_cfg("cls.epochs=2", "cls.optimizer=sgd", "cls.lr=0.01", "cls.schedule=step", "cls.step_size=1",
                   "cls.dropblock.warmup_steps=3")
    train, val = TinyDataset(16, seed=0), TinyDataset(8, seed=1)
    ref = fit_classifier(cfg, RunPaths(tmp_path / "ref"), train, val)

    real = _crash_in_epoch_two(monkeypatch)
    paths = RunPaths(tmp_path / "run")
    with pytest.raises(_Interrupt):
        fit_classifier(cfg, paths, train, val)
    assert torch.load(paths.cls / "last.pt", weights_only=True)["epoch"] == 1
    assert not paths.is_done(paths.cls)
    monkeypatch.setattr(cls_mod, "_train_one_epoch", real)
    resumed = fit_classifier(cfg, paths, train, val)
    assert resumed["epochs_run"] == 1
    a = torch.load(tmp_path / "ref" / "cls" / "last.pt", weights_only=True)
    b = torch.load(paths.cls / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key in ("optimizer", "scheduler"):
        assert repr(a[key]) == repr(b[key])
    assert [{k: v for k, v in h.items() if k != "img_per_s"} for h in a["history"]] == [
        {k: v for k, v in h.items() if k != "img_per_s"} for h in b["history"]]
    assert '"event": "resumed"' in (paths.cls / "train.log").read_text()
    # a finished run resumes to a no-op; cls.resume=false starts over
    again = fit_classifier(cfg, paths, train, val)
    assert again["epochs_run"] == 0 and paths.is_done(paths.cls)
    restart = fit_classifier(tiny_cfg("cls.epochs=1", "cls.resume=false"), paths, train, val)
    assert restart["epochs_run"] == 1 and paths.is_done(paths.cls)
    assert torch.load(paths.cls / "last.pt", weights_only=True)["epoch"] == 1
    # resuming with another architecture is refused
    with pytest.raises(ValueError, match="cannot resume"):
        fit_classifier(tiny_cfg("cls.epochs=2", "cls.head_channels=8"), paths, train, val)


def test_epoch_batch_sampler_shards_global_batches():
    labels = np.zeros((20, 1), np.float32)
    full = EpochBatchSampler(labels, 4, None, seed=5)
    parts = [EpochBatchSampler(labels, 4, None, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in (full, *parts):
        s.set_epoch(1)
    assert len(full) == len(parts[0]) == len(parts[1]) == 5
    for g, a, b in zip(full, *parts):
        assert len(a) == len(b) == 2 and sorted(a + b) == sorted(g)
    first = list(full)
    full.set_epoch(2)
    assert list(full) != first  # reshuffled every epoch ...
    full.set_epoch(1)
    assert list(full) == first  # ... deterministically
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        cls_mod._check_batch(3, 2, 20)
    with pytest.raises(ValueError, match="fewer than"):
        cls_mod._check_batch(4, 1, 2)


def test_epoch_batch_sampler_balanced():
    labels = np.zeros((40, 1), np.float32)
    labels[:8] = 1
    s = EpochBatchSampler(labels, 8, neg_pos_ratio=1.0, seed=0, rank=1, world_size=2)
    batches = list(s)
    assert batches and all(len(b) == 4 for b in batches)
    full = EpochBatchSampler(labels, 8, neg_pos_ratio=1.0, seed=0)
    for g in full:
        assert labels[g, 0].sum() == 4  # 1:1 over the global batch


def test_optimizers_schedules_and_errors():
    from wsss_fast.cls.model import Classifier

    model = Classifier("resnet18", 2, head_channels=8, dropblock=None)
    for name, cls_ in (("adam", torch.optim.Adam), ("sgd", torch.optim.SGD), ("radam", torch.optim.RAdam)):
        assert isinstance(build_optimizer(tiny_cfg(f"cls.optimizer={name}"), model), cls_)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(tiny_cfg("cls.optimizer=lion"), model)
    opt = build_optimizer(tiny_cfg(), model)
    poly = build_scheduler(tiny_cfg("cls.schedule=poly"), opt, iters_per_epoch=5, epochs=2)
    f = poly.lr_lambdas[0]
    assert f(0) == 1.0 and f(10) == 0.0 and f(5) == pytest.approx(0.5 ** 0.9)
    step = build_scheduler(tiny_cfg("cls.schedule=step", "cls.step_size=2", "cls.gamma=0.5"), opt, 5, 6)
    g = step.lr_lambdas[0]
    assert [g(i * 5) for i in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(tiny_cfg("cls.schedule=cosine"), opt, 5, 2)
    with pytest.raises(ValueError, match="pos_weight has 3 values"):
        cls_mod._pos_weight(tiny_cfg("cls.pos_weight=[1,2,3]"), 2, torch.device("cpu"))
    heads = build_optimizer(tiny_cfg("cls.optimizer=sgd", "cls.head_lr_mult=10"), model).param_groups
    assert [g["lr"] for g in heads] == pytest.approx([1e-3, 1e-2])  # the head (3 convs + linear) at 10x


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_epoch_waits_for_values_only_to_log(device, host_reads, name):
    """The loss, scores and labels stay on the device between progress-bar updates, and on CUDA
    the optimizer is fused, so that the GradScaler's step reads no flag: the host's waits do not
    grow with the number of iterations (on the CPU the reads that would wait are counted)."""
    if name == "adam" and device == "cpu":
        pytest.skip("the CPU's Adam reads its step counts, which stay on the host (no wait on CUDA)")
    cfg = tiny_cfg(f"device={device}", f"cls.optimizer={name}")
    model = cls_mod.build_classifier(cfg, load_pretrained=False).to(device)
    opt = build_optimizer(cfg, model)
    assert opt.param_groups[0]["fused"] is (True if device == "cuda" else None)
    sched = build_scheduler(cfg, opt, iters_per_epoch=100, epochs=1)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ctx = DistContext(device=torch.device(device))
    ds = TinyDataset(8)
    batch = (ds.images[:4].to(device), torch.from_numpy(ds.labels[:4]).to(device))

    def waits(iterations: int):
        with host_reads(device) as reads:
            cls_mod._train_one_epoch(model, [batch] * iterations, opt, sched, scaler, None, ctx, amp, "t",
                                     0.5, log_every=1000)
        return reads

    waits(2)  # the optimizer's and the scaler's state come with the first steps
    two, six = waits(2), waits(6)
    assert two.count > 0  # the epoch's end reads the loss
    assert six.count == two.count, six.where


def test_pos_weight_weighs_the_training_loss(tmp_path):
    """cls.pos_weight weighs the positives of the training loss, not only of the val loss: with
    lr 0 the same model sees the same batches, and positives weighted 3x give a larger loss."""
    train = TinyDataset(16, seed=0)
    losses = []
    for w in ("null", "3.0"):
        out = fit_classifier(tiny_cfg("cls.epochs=1", "cls.lr=0", f"cls.pos_weight={w}"),
                             RunPaths(tmp_path / w), train, None)
        losses.append(out["history"][0]["train_loss"])
    assert losses[1] > 1.5 * losses[0], losses


def test_resume_keeps_the_best_epoch(tmp_path, monkeypatch):
    """After a resume, best.pt stays the earlier epoch unless a later one scores higher on val."""
    cfg = tiny_cfg("cls.epochs=2")
    train, val = TinyDataset(16, seed=0), TinyDataset(8, seed=1)
    score = {"val": 0.9}
    real_f1 = cls_mod.multilabel_f1
    monkeypatch.setattr(cls_mod, "multilabel_f1",
                        lambda p, y, t: torch.tensor(score["val"]) if len(y) == len(val) else real_f1(p, y, t))
    real = _crash_in_epoch_two(monkeypatch)
    paths = RunPaths(tmp_path)
    with pytest.raises(_Interrupt):
        fit_classifier(cfg, paths, train, val)
    monkeypatch.setattr(cls_mod, "_train_one_epoch", real)
    score["val"] = 0.5  # the resumed epoch 2 is worse
    out = fit_classifier(cfg, paths, train, val)
    assert out["epochs_run"] == 1 and out["best_epoch"] == 1 and out["best_f1"] == pytest.approx(0.9)
    assert torch.load(paths.cls / "best.pt", weights_only=True)["epoch"] == 1


def test_label_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="dataset.num_classes=1"):
        fit_classifier(tiny_cfg(), RunPaths(tmp_path), TinyDataset(8, num_classes=2), None,
                       DistContext())


# ---------------------------------------------------------------- DDP on CPU

DDP_SCRIPT = """
import hashlib, importlib.util, json, os
import torch
import torch.distributed as dist
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("tiny_cls_test", {test_file!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from wsss_fast.engine.paths import RunPaths
from wsss_fast.cls.train import fit_classifier
from wsss_fast.engine.dist import init_distributed
out = {out!r}
cfg = mod.tiny_cfg("cls.epochs=1", "cls.batch_size=8", "dataset.num_classes=2")
ctx = init_distributed(cfg)
# under torchrun a process group even for one process (the DDP path runs as with several)
assert ctx.world_size == int(os.environ["WORLD_SIZE"]) and ctx.distributed and dist.get_backend() == "gloo"
res = fit_classifier(cfg, RunPaths(out), mod.TinyDataset(16, num_classes=2),
                     mod.TinyDataset(6, num_classes=2), ctx)
digest = hashlib.sha1(b"".join(v.numpy().tobytes() for k, v in res["model"].state_dict().items()
                               if "running" not in k and "num_batches" not in k)).hexdigest()
ctx.close()
with open(os.path.join(out, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({{"history": res["history"], "digest": digest}}, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("nproc", [2, 1])
def test_ddp_gloo_under_torchrun(tmp_path, nproc):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).format(test_file=str(Path(__file__).resolve()), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / f"rank{nproc - 1}.json").read_text())
    # gradients were all-reduced: identical weights on both ranks
    assert r0["digest"] == r1["digest"]
    # both ranks saw the same epochs and metrics (reduced over the group) ...
    assert len(r0["history"]) == 1
    for h0, h1 in zip(r0["history"], r1["history"]):
        for k in ("train_loss", "train_f1", "val_f1", "val_loss"):
            assert h0[k] == pytest.approx(h1[k], rel=1e-6), k
    # ... 16 images in global batches of 8 = 2 iterations per epoch (split 4 + 4 over two ranks)
    ckpt = torch.load(out / "cls" / "last.pt", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == 2
    # only rank 0 wrote the log (one header line) and the checkpoints
    log = [json.loads(x) for x in (out / "cls" / "train.log").read_text().splitlines()]
    starts = [r for r in log if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == nproc and starts[0]["ddp"] == "gloo"
    assert (out / "cls" / "best.pt").exists() and (out / "cls" / ".done").exists()
