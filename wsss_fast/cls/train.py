"""Step 1: train the multi-label classifier with DropBlock (``wsss-fast train-cls``).

Viniavskyi, Dobko and Dobosevych, "Weakly-Supervised Segmentation for Disease Localization
in Chest X-Ray Images", AIME 2020: a dilated VGG16/ResNet50 with DropBlock, trained with
BCE-with-logits on image-level labels and class-balanced batches; the best epoch by
multi-label F1 on the validation split feeds Grad-CAM++.

Outputs (``paths.cls``): ``last.pt`` (written atomically after every epoch, with optimizer,
scheduler and AMP state, used by ``cls.resume``), ``best.pt`` (best validation F1),
``train.log`` and ``.done``. Under ``torchrun`` the model is wrapped in
DistributedDataParallel, every global batch is split over the processes, and only rank 0
writes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import get
from ..data.base import as_is
from ..data.sampler import GlobalBatchSampler
from ..engine.dist import DistContext, init_distributed
from ..engine.files import atomic_torch_save
from ..engine.paths import RunPaths
from ..engine.training import (TrainLog, fused_on_cuda, load_checkpoint, poly_factor, save_checkpoint,
                               seed_everything)
from ..metrics import multilabel_f1
from .model import build_classifier, classifier_kwargs

__all__ = ["train_cls", "fit_classifier", "build_optimizer", "build_scheduler"]

# config keys that shape the classifier's state dict: a checkpoint of another is not resumed
ARCH_KEYS = ("cls.arch", "cls.width", "cls.head_channels", "cls.dropblock.enabled", "cls.dropblock.place",
             "dataset.num_classes")


def _check_batch(batch_size: int, world_size: int, n_images: int) -> None:
    if batch_size < world_size or batch_size % world_size:
        raise ValueError(f"cls.batch_size ({batch_size}) must be a multiple of the number of "
                         f"processes ({world_size})")
    if n_images < batch_size:
        raise ValueError(f"the training split has {n_images} images, fewer than cls.batch_size={batch_size}")


def _collate(items: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"training images of one batch differ in size ({sorted(shapes)[:3]}); set "
                         "dataset.image_size (or dataset.crop_size when image_size is null)")
    return (torch.stack([it["image"] for it in items]),
            torch.stack([torch.as_tensor(it["label"], dtype=torch.float32) for it in items]))


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, SGD or RAdam over the model's parameter groups (``cls.*`` keys); fused on CUDA
    (Adam, SGD), so that the AMP step does not wait for the GPU."""
    lr, wd = float(get(cfg, "cls.lr")), float(get(cfg, "cls.weight_decay"))
    groups = (model.param_groups(lr, float(get(cfg, "cls.head_lr_mult")))
              if hasattr(model, "param_groups") else [{"params": list(model.parameters())}])
    name, fused = str(get(cfg, "cls.optimizer")).lower(), fused_on_cuda(model)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(get(cfg, "cls.momentum")), weight_decay=wd, **fused)
    if name == "radam":
        return torch.optim.RAdam(groups, lr=lr, weight_decay=wd)
    raise ValueError(f"cls.optimizer: unknown optimizer '{name}'; choose adam, sgd or radam")


def build_scheduler(cfg: dict, optimizer: torch.optim.Optimizer, iters_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LR factor: ``poly`` (1 - it/total)^power, or ``step`` (gamma every step_size epochs)."""
    name = str(get(cfg, "cls.schedule")).lower()
    total = max(1, iters_per_epoch * epochs)
    if name == "poly":
        power = float(get(cfg, "cls.poly_power"))

        def factor(it: int) -> float:
            return poly_factor(it, total, power)
    elif name == "step":
        step, gamma = int(get(cfg, "cls.step_size")), float(get(cfg, "cls.gamma"))

        def factor(it: int) -> float:
            return gamma ** ((it // max(1, iters_per_epoch)) // max(1, step))
    else:
        raise ValueError(f"cls.schedule: unknown schedule '{name}'; choose poly or step")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _pos_weight(cfg: dict, num_classes: int, device: torch.device) -> torch.Tensor | None:
    pw = get(cfg, "cls.pos_weight")
    if pw is None:
        return None
    t = torch.as_tensor(pw, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(num_classes).clone()
    if t.numel() != num_classes:
        raise ValueError(f"cls.pos_weight has {t.numel()} values, expected 1 or {num_classes}")
    return t


@torch.no_grad()
def _predict(model: nn.Module, dataset: Dataset, indices: list[int], batch_size: int, ctx: DistContext,
             num_workers: int, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``dataset[indices]`` gathered from every rank (CPU tensors, float32)."""
    model.eval()
    mine = indices[ctx.rank::ctx.world_size]
    probs, labels = [torch.zeros(0)], [torch.zeros(0)]
    if mine:
        loader = DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                            shuffle=False, num_workers=num_workers, collate_fn=as_is)
        for items in loader:
            by_size: dict[tuple, list[dict]] = {}
            for it in items:  # evaluation images may differ in size (VOC at original size)
                by_size.setdefault(tuple(it["image"].shape), []).append(it)
            for group in by_size.values():
                x, y = _collate(group)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    logits = model(x.to(ctx.device, non_blocking=True))
                probs.append(logits.float().cpu().reshape(len(x), -1))
                labels.append(y.reshape(len(x), -1))
    p = torch.cat([t for t in probs if t.numel()] or [torch.zeros(0, 1)])
    y = torch.cat([t for t in labels if t.numel()] or [torch.zeros(0, 1)])
    gathered = ctx.all_gather_object((p, y))
    return torch.cat([g[0] for g in gathered if len(g[0])]), torch.cat([g[1] for g in gathered if len(g[1])])


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler, scaler: torch.amp.GradScaler, pos_weight: torch.Tensor | None,
                     ctx: DistContext, amp: bool, desc: str, f1_threshold: float,
                     log_every: int) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean loss and F1 over all ranks.

    Loss, scores and labels stay on the device until a progress-bar update (every ``log_every``
    iterations) or the epoch's end: a read in every iteration would make the host wait for the
    GPU to finish the step before it queues the next one.
    """
    model.train()
    loss_sum, n_seen = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    probs, labels = [], []
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False)
    for it, (x, y) in enumerate(bar):
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach().double() * len(x)
        n_seen += len(x)
        probs.append(torch.sigmoid(logits.detach().float()))
        labels.append(y.detach())
        if ctx.is_main and (it % max(1, log_every) == 0 or it == len(loader) - 1):  # reads wait for the GPU
            f1 = multilabel_f1(torch.cat(probs), torch.cat(labels), f1_threshold)
            rate = n_seen * ctx.world_size / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{float(loss_sum) / n_seen:.4f}", f1=f"{f1:.3f}", img_s=f"{rate:.1f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    total_loss, total_n = ctx.all_reduce_sum([float(loss_sum), float(n_seen)])
    p = torch.cat(probs).cpu() if probs else torch.zeros(0, 1)
    y_ = torch.cat(labels).cpu() if labels else torch.zeros(0, 1)
    gathered = ctx.all_gather_object((p, y_))
    f1 = multilabel_f1(torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]), f1_threshold)
    elapsed = time.perf_counter() - t0
    return {"loss": total_loss / max(1.0, total_n), "f1": float(f1),
            "img_per_s": total_n / max(1e-9, elapsed), "seconds": elapsed}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def fit_classifier(cfg: dict, paths: RunPaths, train_set: Dataset, val_set: Dataset | None = None,
                   ctx: DistContext | None = None) -> dict[str, Any]:
    """Train the classifier of ``cfg`` on given datasets (the body of :func:`train_cls`).

    Args:
        cfg: run configuration (``cls.*``, ``sampler.neg_pos_ratio``, ``seed``, ``num_workers``).
        paths: run folder; checkpoints and the log go to ``paths.cls``.
        train_set: items are dicts with ``image`` [3, H, W] and ``label`` [N]; needs a
            ``labels`` array [len, N] for the sampler (taken from the items otherwise).
        val_set: the model-selection split, or None (then best.pt is the last epoch).
        ctx: distributed context (default: from the environment).

    Returns:
        ``{"history": [per-epoch dicts], "best_f1", "best_epoch", "epochs_run", "model"}`` (the
        model after the last epoch, unwrapped from DDP).
    """
    owns_ctx = ctx is None
    ctx = ctx or init_distributed(cfg)
    try:
        return _fit(cfg, paths, train_set, val_set, ctx)
    finally:
        if owns_ctx:
            ctx.close()


def _labels_of(dataset: Dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = np.stack([np.asarray(dataset[i]["label"], dtype=np.float32) for i in range(len(dataset))])
    return np.asarray(labels, dtype=np.float32).reshape(len(dataset), -1)


def _fit(cfg: dict, paths: RunPaths, train_set: Dataset, val_set: Dataset | None,
         ctx: DistContext) -> dict[str, Any]:
    seed = int(get(cfg, "seed"))
    epochs = int(get(cfg, "cls.epochs"))
    batch_size = int(get(cfg, "cls.batch_size"))
    num_workers = int(get(cfg, "num_workers") or 0)
    amp = bool(get(cfg, "cls.amp")) and ctx.device.type == "cuda"
    f1_thr = float(get(cfg, "cls.f1_threshold"))
    last_path, best_path = paths.cls / "last.pt", paths.cls / "best.pt"

    resume = bool(get(cfg, "cls.resume")) and last_path.exists()
    seed_everything(seed)
    model = build_classifier(cfg, load_pretrained=not resume).to(ctx.device)
    kwargs = classifier_kwargs(cfg, load_pretrained=False)
    labels = _labels_of(train_set)
    if labels.shape[1] != model.num_classes:
        raise ValueError(f"training labels have {labels.shape[1]} classes but dataset.num_classes="
                         f"{model.num_classes}")
    ratio = get(cfg, "sampler.neg_pos_ratio")
    _check_batch(batch_size, ctx.world_size, len(labels))
    sampler = GlobalBatchSampler(labels, batch_size, ratio, seed, ctx.rank, ctx.world_size)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(sampler), epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    pos_weight = _pos_weight(cfg, model.num_classes, ctx.device)

    log = TrainLog(paths.cls / "train.log", "train-cls", enabled=ctx.is_main)
    start_epoch, best_f1, best_epoch, history = 0, -math.inf, -1, []
    ckpt = (load_checkpoint(last_path, cfg=cfg, arch_keys=ARCH_KEYS, model=model, optimizer=optimizer,
                            scaler=scaler) if resume else None)
    if ckpt is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_f1, best_epoch = ckpt["epoch"], ckpt["best_f1"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        log.write({"event": "resumed", "from": str(last_path), "epoch": start_epoch})
    train_model: nn.Module = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    log.write({"event": "start", "arch": kwargs["arch"], "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "classes": model.num_classes, "train_images": len(train_set),
               "val_images": len(val_set) if val_set is not None else 0, "epochs": epochs,
               "iterations": len(sampler), "batch_size": batch_size, "processes": ctx.world_size,
               "ddp": ctx.backend, "device": str(ctx.device), "amp": amp}, echo=False)

    if ctx.is_main and start_epoch < epochs:
        (paths.cls / ".done").unlink(missing_ok=True)  # training again: not done until it ends
    for epoch in range(start_epoch, epochs):
        # augmentation, DropBlock and sampling depend only on (seed, epoch, rank): resumable
        seed_everything(seed + 1000 * (epoch + 1) + ctx.rank)
        sampler.set_epoch(epoch)
        stats = _train_one_epoch(train_model, loader, optimizer, scheduler, scaler, pos_weight, ctx, amp,
                                 f"cls epoch {epoch + 1}/{epochs}", f1_thr, int(get(cfg, "cls.log_every")))
        record = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_f1": stats["f1"],
                  "img_per_s": stats["img_per_s"], "lr": optimizer.param_groups[0]["lr"]}
        if val_set is not None and len(val_set):
            vlogits, vlabels = _predict(model, val_set, list(range(len(val_set))), batch_size, ctx,
                                        num_workers, amp)
            record["val_loss"] = float(F.binary_cross_entropy_with_logits(
                vlogits, vlabels, pos_weight=None if pos_weight is None else pos_weight.cpu()))
            record["val_f1"] = float(multilabel_f1(torch.sigmoid(vlogits), vlabels, f1_thr))
            score = record["val_f1"]
            is_best = score > best_f1
        else:  # no model-selection split: the last epoch is the best (its F1 is the training F1)
            score, is_best = stats["f1"], True
        history.append(record)
        if is_best:
            best_f1, best_epoch = score, epoch + 1
        if ctx.is_main:
            state = _unwrap(train_model).state_dict()
            common = {"model_kwargs": kwargs, "class_names": list(getattr(train_set, "class_names", []) or []),
                      "arch": kwargs["arch"]}
            if is_best:
                atomic_torch_save({"epoch": epoch + 1, "model": state, "f1": score, **common}, best_path)
            save_checkpoint(last_path, cfg=cfg, arch_keys=ARCH_KEYS, model=_unwrap(train_model),
                            optimizer=optimizer, epoch=epoch + 1, scaler=scaler, scheduler=scheduler.state_dict(),
                            best_f1=best_f1, best_epoch=best_epoch, history=history, **common)
        log.write(record, note="  (best)" if is_best else "")
        ctx.barrier()
    if ctx.is_main:
        if not best_path.exists() and last_path.exists():  # epochs == 0 after a resume, etc.
            ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
            atomic_torch_save({k: ckpt[k] for k in ("epoch", "model", "model_kwargs", "class_names", "arch")}
                              | {"f1": ckpt["best_f1"]}, best_path)
        log.write({"event": "done", "best_f1": best_f1, "best_epoch": best_epoch}, echo=False)
        paths.mark_done(paths.cls)
    ctx.barrier()
    return {"history": history, "best_f1": best_f1, "best_epoch": best_epoch,
            "epochs_run": max(0, epochs - start_epoch), "model": model}


def train_cls(cfg: dict, paths: RunPaths) -> None:
    """``wsss-fast train-cls``: train the step-1 classifier on ``cls.train_split``.

    Builds the datasets with :func:`wsss_fast.data.build_dataset` (rank 0 first, so that a
    split file is written once) and runs :func:`fit_classifier`. Works as one process or
    under ``torchrun`` (DDP; NCCL on CUDA, gloo on the CPU).
    """
    from ..data import build_dataset, without_masks

    ctx = init_distributed(cfg)
    try:
        train_split = get(cfg, "cls.train_split")
        val_split = get(cfg, "cls.val_split")
        sets: dict[str, Any] = {}
        for turn in ((True,), (False,)) if ctx.distributed else ((None,),):
            if turn[0] is None or turn[0] == ctx.is_main:
                sets["train"] = without_masks(build_dataset(cfg, train_split, paths, train=True))
                sets["val"] = (without_masks(build_dataset(cfg, val_split, paths, train=False))
                               if val_split else None)
            ctx.barrier()
        fit_classifier(cfg, paths, sets["train"], sets["val"], ctx)
    finally:
        ctx.close()
