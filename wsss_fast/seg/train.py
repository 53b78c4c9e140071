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

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import get
from ..data.sampler import GlobalBatchSampler
from ..engine.dist import init_distributed
from ..engine.files import atomic_torch_save
from ..engine.paths import RunPaths
from ..engine.training import (TrainLog, fused_on_cuda, load_checkpoint, poly_factor, save_checkpoint,
                               seed_everything)
from .data import IGNORE, PseudoLabelDataset, train_transform
from .model import model_from_cfg


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


def _dataset(cfg: dict, paths: RunPaths):
    from ..data import build_dataset

    split = get(cfg, "seg.train_split")
    base = build_dataset(cfg, split, paths, train=False)
    missing = [i for i in base.image_ids if not (paths.sem_seg / f"{i}.png").exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(base.image_ids)} pseudo labels of split '{split}' are missing "
            f"in {paths.sem_seg} (first: {paths.sem_seg / (missing[0] + '.png')}); run make-sem-seg first")
    return base


ARCH_KEYS = ("seg.arch", "seg.encoder", "seg.decoder_channels", "dataset.num_classes")  # shape the state dict


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (the paper's), Adam or AdamW at ``seg.lr`` with ``seg.weight_decay``; fused on CUDA,
    so that the AMP step does not wait for the GPU."""
    lr, wd = float(get(cfg, "seg.lr")), float(get(cfg, "seg.weight_decay"))
    name, fused = str(get(cfg, "seg.optimizer")).lower(), fused_on_cuda(model)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(get(cfg, "seg.momentum")), weight_decay=wd,
                               **fused)
    if name in ("adam", "adamw"):
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(model.parameters(), lr=lr,
                                                                            weight_decay=wd, **fused)
    raise ValueError(f"seg.optimizer must be sgd, adam or adamw, got '{name}'")


def _train_one_epoch(net: torch.nn.Module, loader, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     pos_weight: float | None, amp: bool, log_every: int, lr: float, desc: str,
                     show: bool) -> float:
    """One pass over ``loader`` (batches with ``image`` and ``mask``); returns the mean loss.

    The loss stays on the device between progress-bar updates (every ``log_every`` iterations):
    a read in every iteration would make the host wait for the GPU to finish the step before
    it queues the next one.
    """
    device = next(net.parameters()).device
    net.train()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    bar = tqdm(loader, desc=desc, disable=not show, leave=False)
    for it, batch in enumerate(bar):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = net(x)
        loss = seg_loss(logits.float(), y, pos_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total += loss.detach().double() * len(x)
        count += len(x)
        if show and (it % log_every == 0 or it == len(loader) - 1):
            bar.set_postfix(loss=f"{float(total) / max(count, 1):.4f}", lr=f"{lr:.2e}")
    bar.close()
    return float(total) / max(count, 1)


def train_seg(cfg: dict, paths: RunPaths) -> None:
    """Train the step-3 model on ``paths.sem_seg`` pseudo labels; writes ``paths.seg``.

    Outputs: ``seg/last.pt`` (resume state, every epoch), ``seg/final.pt`` (weights and
    model settings), ``seg/train.log`` (one JSON line per epoch), ``seg/.done``.
    """
    dist = init_distributed(cfg)
    device = dist.device
    seed = int(get(cfg, "seed"))
    seed_everything(seed + dist.rank)
    paths.seg.mkdir(parents=True, exist_ok=True)

    base = _dataset(cfg, paths)
    num_classes = int(base.num_classes)
    ds = PseudoLabelDataset(base, paths.sem_seg, train_transform(cfg))
    batch_size = int(get(cfg, "seg.batch_size"))
    # every rank needs a slice of at least 2 (BatchNorm, e.g. DeepLabV3+'s ASPP pooling, cannot
    # train on one sample), unless the batches themselves are that small
    least = dist.world_size * (2 if batch_size >= 2 * dist.world_size else 1)
    batches = GlobalBatchSampler(base.labels, batch_size, get(cfg, "sampler.neg_pos_ratio"), seed, dist.rank,
                                 dist.world_size, seed_stride=1000, min_batch=least)
    loader = DataLoader(ds, batch_sampler=batches, num_workers=int(get(cfg, "num_workers")),
                        pin_memory=device.type == "cuda", persistent_workers=False)

    model = model_from_cfg(cfg, num_classes).to(device)
    if dist.world_size > 1 and device.type == "cuda":  # one process: its own statistics are the batch's
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    opt = build_optimizer(cfg, model)
    base_lr = float(get(cfg, "seg.lr"))
    use_amp = bool(get(cfg, "seg.amp")) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    epochs = int(get(cfg, "seg.epochs"))
    pos_weight = get(cfg, "seg.pos_weight")
    log_every = max(1, int(get(cfg, "seg.log_every")))

    last = paths.seg / "last.pt"
    ckpt = load_checkpoint(last, cfg=cfg, arch_keys=ARCH_KEYS, model=model, optimizer=opt, scaler=scaler)
    start = int(ckpt["epoch"]) if ckpt else 0
    log = TrainLog(paths.seg / "train.log", "train-seg", enabled=dist.is_main)
    if ckpt and dist.is_main:
        tqdm.write(f"train-seg: resuming from {last} at epoch {start}/{epochs}")

    for epoch in range(start, epochs):
        lr = base_lr * poly_factor(epoch, epochs, float(get(cfg, "seg.poly_power")))
        for g in opt.param_groups:
            g["lr"] = lr
        # per-epoch seed (augmentation, loader workers): a resumed run repeats an uninterrupted one
        seed_everything(seed + 1000 * (epoch + 1) + dist.rank)
        batches.set_epoch(epoch)
        t0 = time.time()
        loss = _train_one_epoch(net, loader, opt, scaler, pos_weight, use_amp, log_every, lr,
                                f"train-seg {epoch + 1}/{epochs}", dist.is_main)
        if dist.is_main:
            save_checkpoint(last, cfg=cfg, arch_keys=ARCH_KEYS, model=model, optimizer=opt, epoch=epoch + 1,
                            scaler=scaler)
        log.write({"epoch": epoch + 1, "loss": loss, "lr": lr,
                   "seconds": round(time.time() - t0, 2)})
        dist.barrier()

    if dist.is_main:
        atomic_torch_save({"model": model.state_dict(), "num_classes": num_classes,
                           "arch": get(cfg, "seg.arch"), "encoder": get(cfg, "seg.encoder"),
                           "epochs": epochs}, paths.seg / "final.pt")
        paths.mark_done(paths.seg)
    dist.barrier()
    dist.close()
