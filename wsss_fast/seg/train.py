"""Step 3: train the segmentation network on the IRNet pseudo labels.

Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for Disease Localization
in Chest X-Ray Images", AIME 2020, Sec. 3.3: a U-Net (or DeepLabV3+) is trained on the
random-walk pseudo labels of the training images with a positive-weighted BCE (against
overfitting to the many normal images), class-balanced batches and the classifier's
augmentations; SGD, lr 6e-5, momentum 0.9, weight decay 1e-6, poly decay every epoch.
Multi-class tasks (VOC) use cross-entropy with ignore index 255.

Runs on one device, or with ``torchrun --nproc_per_node=G -m wsss_fast.cli.main train-seg``
(DistributedDataParallel; every rank draws the same global balanced batch and takes
its slice). Checkpoints are atomic (``seg/last.pt`` every epoch) and training resumes
from them.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import get
from ..runs import RunPaths, atomic_torch_save, seed_everything
from ..train.dist import init_distributed
from .data import IGNORE, PseudoLabelDataset, train_transform
from .models import model_from_cfg


def seg_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Step 3 loss.

    Args:
        logits: [B, 1, H, W] (binary) or [B, C, H, W] with C = N + 1 (multi-class).
        target: int64 [B, H, W]; 0 = bg, c+1 = class c, 255 = ignored.
        pos_weight: weight of positive pixels in the binary BCE (None = 1).

    Returns:
        Scalar loss: BCE-with-logits over the non-ignored pixels (binary), else
        cross-entropy with ignore index 255. Zero (with a graph) when nothing is valid.
    """
    if logits.shape[1] == 1:
        valid = target != IGNORE
        if not bool(valid.any()):
            return logits.sum() * 0.0
        pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
        return F.binary_cross_entropy_with_logits(
            logits[:, 0][valid].float(), (target[valid] > 0).float(), pos_weight=pw)
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def poly_lr(base_lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """Poly schedule evaluated once per epoch: base * (1 - epoch / epochs) ** power."""
    return base_lr * (1.0 - epoch / max(epochs, 1)) ** power


class _Batches:
    """Global batches (class-balanced when possible), sliced for this rank."""

    def __init__(self, labels: np.ndarray, batch_size: int, neg_pos_ratio, seed: int,
                 rank: int, world: int) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.ratio = neg_pos_ratio
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        pos = labels.reshape(len(labels), -1).max(axis=1) > 0 if len(labels) else np.zeros(0, bool)
        self.balanced = neg_pos_ratio is not None and 0 < pos.sum() < len(pos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global(self) -> list[list[int]]:
        seed = self.seed + 1000 * self.epoch
        if self.balanced:
            from ..data.sampler import BalancedBatchSampler

            sampler = BalancedBatchSampler(self.labels, self.batch_size, self.ratio, seed)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            return [list(map(int, b)) for b in sampler]
        perm = np.random.default_rng(seed).permutation(len(self.labels)).tolist()
        return [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]

    def _kept(self) -> list[list[int]]:
        # Every rank needs a slice of at least 2 (BatchNorm, e.g. DeepLabV3+'s ASPP pooling,
        # cannot train on one sample), unless the batches themselves are that small: a short
        # last batch is dropped (the order is reshuffled every epoch).
        least = self.world * (2 if self.batch_size >= 2 * self.world else 1)
        return [b for b in self._global() if len(b) >= least]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._kept():
            yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return len(self._kept())


def _dataset(cfg: dict, paths: RunPaths):
    from ..data import build_dataset

    split = get(cfg, "seg.train_split", "train")
    base = build_dataset(cfg, split, paths, train=False)
    missing = [i for i in base.image_ids if not (paths.sem_seg / f"{i}.png").exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(base.image_ids)} pseudo labels of split '{split}' are missing "
            f"in {paths.sem_seg} (first: {paths.sem_seg / (missing[0] + '.png')}); run make-sem-seg first")
    return base


def train_seg(cfg: dict, paths: RunPaths) -> None:
    """Train the step-3 model on ``paths.sem_seg`` pseudo labels; writes ``paths.seg``.

    Outputs: ``seg/last.pt`` (resume state, every epoch), ``seg/final.pt`` (weights and
    model settings), ``seg/train.log`` (one JSON line per epoch), ``seg/.done``.
    """
    s = cfg.get("seg", {})
    dist = init_distributed(cfg)
    device = dist.device
    seed_everything(int(cfg.get("seed", 0)) + dist.rank)
    paths.seg.mkdir(parents=True, exist_ok=True)

    base = _dataset(cfg, paths)
    num_classes = int(getattr(base, "num_classes", get(cfg, "dataset.num_classes", 1)))
    ds = PseudoLabelDataset(base, paths.sem_seg, train_transform(cfg))
    labels = np.asarray(base.labels, dtype=np.float32)
    batch_size = int(s.get("batch_size", 8))
    batches = _Batches(labels, batch_size, get(cfg, "sampler.neg_pos_ratio"), int(cfg.get("seed", 0)),
                       dist.rank, dist.world_size)
    workers = int(cfg.get("num_workers", 0))
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)

    model = model_from_cfg(cfg, num_classes).to(device)
    if dist.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    base_lr = float(s.get("lr", 6e-5))
    opt_name = str(s.get("optimizer", "sgd")).lower()
    wd = float(s.get("weight_decay", 1e-6))
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=float(s.get("momentum", 0.9)),
                              weight_decay=wd)
    elif opt_name in ("adam", "adamw"):
        cls = torch.optim.Adam if opt_name == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), lr=base_lr, weight_decay=wd)
    else:
        raise ValueError(f"seg.optimizer must be sgd, adam or adamw, got '{opt_name}'")
    use_amp = bool(s.get("amp", True)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    epochs = int(s.get("epochs", 10))
    pos_weight = s.get("pos_weight")

    start = 0
    last = paths.seg / "last.pt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["epoch"])
        if dist.is_main:
            print(f"train-seg: resuming from {last} at epoch {start}/{epochs}")

    log = paths.seg / "train.log"
    for epoch in range(start, epochs):
        lr = poly_lr(base_lr, epoch, epochs, float(s.get("poly_power", 0.9)))
        for g in opt.param_groups:
            g["lr"] = lr
        # per-epoch seed (augmentation, loader workers): a resumed run repeats an uninterrupted one
        seed_everything(int(cfg.get("seed", 0)) + 1000 * (epoch + 1) + dist.rank)
        batches.set_epoch(epoch)
        net.train()
        total, count, t0 = 0.0, 0, time.time()
        bar = tqdm(loader, desc=f"train-seg {epoch + 1}/{epochs}", disable=not dist.is_main, leave=False)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["mask"].to(device, non_blocking=True)
            ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with ctx:
                logits = net(x)
            loss = seg_loss(logits.float(), y, pos_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}", lr=f"{lr:.2e}")
        bar.close()
        if dist.is_main:
            atomic_torch_save({"epoch": epoch + 1, "model": model.state_dict(),
                               "optimizer": opt.state_dict(),
                               "scaler": scaler.state_dict() if use_amp else None}, last)
            with open(log, "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, "loss": total / max(count, 1), "lr": lr,
                                    "seconds": round(time.time() - t0, 2)}) + "\n")
            print(f"train-seg epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f} "
                  f"lr {lr:.2e} ({time.time() - t0:.0f}s)")
        dist.barrier()

    if dist.is_main:
        atomic_torch_save({"model": model.state_dict(), "num_classes": num_classes,
                           "arch": s.get("arch"), "encoder": s.get("encoder"),
                           "epochs": epochs}, paths.seg / "final.pt")
        paths.mark_done(paths.seg)
    dist.barrier()
    dist.close()
