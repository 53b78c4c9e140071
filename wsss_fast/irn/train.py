"""Step 2 training: IRNet's boundary and displacement branches from IR labels.

Ahn et al., CVPR 2019 (``step/train_irn.py``): random rescale (0.5, 1.5), horizontal flip
and random crop of image and IR label; pair labels at stride 4 over the radius-10 search
offsets (computed in the data loader); SGD with a poly schedule, the displacement branch at
10x the boundary branch's learning rate. After training, the mean displacement over the
training images is estimated and stored in the MeanShift layer (``final.pt``).

Outputs in ``paths.irn``: ``last.pt`` (written atomically every epoch with the RNG states; an
interrupted run resumes from it and repeats the interrupted epoch as an uninterrupted run
would), ``final.pt`` (model with the displacement mean), ``train.log`` (JSON lines).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..config import get
from ..engine.dist import resolve_device
from ..engine.files import atomic_torch_save, read_png
from ..engine.paths import RunPaths
from ..engine.training import TrainLog, load_checkpoint, poly_factor, save_checkpoint, seed_everything
from . import common
from .common import resize_image_uint8
from .crf import to_rgb_uint8
from .loss import irn_loss
from .model import IRNet
from .pair_labels import offsets_array, pair_labels, reduce_label

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_uint8(img: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` normalized with the ImageNet mean/std."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


class AffinityDataset(Dataset):
    """Images + IR labels -> augmented crop and its pair labels (IRNet's VOC12AffinityDataset).

    Args:
        base: a :mod:`wsss_fast.data` dataset (``image_ids``, ``load_image``).
        label_dir: folder of ``<id>.png`` IR labels (at the working resolution).
        crop_size: square crop (a multiple of 4).
        radius: pair search radius.
        rescale: (lo, hi) random scale range, or None.
        hflip: random horizontal flip.
        augment: False gives the whole image, unscaled (used for the displacement mean).

    Items: ``img`` float32 [3, S, S]; ``bg_pos``, ``fg_pos``, ``neg`` uint8 [D, N] (see
    :func:`wsss_fast.irn.pair_labels.pair_labels`); ``image_id``.
    """

    def __init__(self, base, label_dir, crop_size: int, radius: int = 10,
                 rescale: tuple[float, float] | None = (0.5, 1.5), hflip: bool = True, augment: bool = True):
        if augment and crop_size % 4:
            raise ValueError(f"irn.crop_size must be a multiple of 4, got {crop_size}")
        if augment and crop_size // 4 <= 2 * (int(radius) - 1):
            raise ValueError(
                f"irn.crop_size {crop_size} is too small for irn.radius {radius}: the stride-4 "
                f"crop ({crop_size // 4} px) must be wider than 2 * (radius - 1) = {2 * (int(radius) - 1)}; "
                "use a larger crop or a smaller radius")
        self.base, self.label_dir, self.crop_size, self.radius = base, label_dir, int(crop_size), int(radius)
        self.rescale = tuple(rescale) if rescale else None
        self.augment = augment
        self.offsets = offsets_array(self.radius)
        fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: 255}
        ops = [v2.RandomHorizontalFlip()] if hflip else []
        ops.append(v2.RandomCrop(self.crop_size, pad_if_needed=True, fill=fill))
        self.crop = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.base.image_ids)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image [H, W, 3], uint8 IR label [H, W]) at the working resolution."""
        image_id = self.base.image_ids[i]
        label = read_png(self.label_dir / f"{image_id}.png")
        img = resize_image_uint8(to_rgb_uint8(np.asarray(self.base.load_image(i))), label.shape)
        return img, label

    def __getitem__(self, i: int) -> dict:
        img, label = self.load(i)
        img_t = normalize_uint8(img)
        lab_t = torch.from_numpy(label.copy())[None]
        if self.augment:
            if self.rescale:
                s = float(np.random.uniform(*self.rescale))
                size = [max(1, round(img_t.shape[1] * s)), max(1, round(img_t.shape[2] * s))]
                img_t = TF.resize(img_t, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
                lab_t = TF.resize(lab_t, size, interpolation=v2.InterpolationMode.NEAREST)
            img_t, lab_t = self.crop(tv_tensors.Image(img_t), tv_tensors.Mask(lab_t))
        lab = reduce_label(lab_t[0].numpy().astype(np.uint8), 4)
        bg_pos, fg_pos, neg = pair_labels(lab, self.radius, self.offsets)
        return {"img": torch.as_tensor(img_t).contiguous(), "bg_pos": bg_pos, "fg_pos": fg_pos, "neg": neg,
                "image_id": self.base.image_ids[i]}


class _WholeImages(Dataset):
    """The first ``n`` images of an :class:`AffinityDataset`, whole and normalized: ``[3, H, W]``."""

    def __init__(self, dataset: AffinityDataset, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return normalize_uint8(self.dataset.load(i)[0])


def _stack_by_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Runs of consecutive images of one size, stacked: ``[k, 3, H, W]`` each, in order."""
    runs: list[list[torch.Tensor]] = []
    for x in images:
        if runs and runs[-1][-1].shape == x.shape:
            runs[-1].append(x)
        else:
            runs.append([x])
    return [torch.stack(r) for r in runs]


@torch.no_grad()
def estimate_displacement_mean(model: IRNet, dataset: AffinityDataset, device: torch.device,
                               max_images: int | None = None, batch_size: int = 1,
                               num_workers: int = 0) -> torch.Tensor:
    """Mean of the raw displacement output over whole training images (IRNet's MeanShift mean).

    Images are decoded by ``num_workers`` loader processes and run ``batch_size`` at a time
    (consecutive images of one size together); the sum stays on the device until the end.

    Returns:
        ``[2]`` float32 mean (dy, dx) over every pixel of every image; also written into
        ``model.mean_shift.running_mean``.
    """
    ms = model.mean_shift
    model.eval()
    ms.running_mean.zero_()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    loader = DataLoader(_WholeImages(dataset, n), batch_size=max(1, int(batch_size)), num_workers=num_workers,
                        collate_fn=_stack_by_size, pin_memory=device.type == "cuda")
    with tqdm(total=n, desc="irn dp mean", unit="img", leave=False) as bar:
        for runs in loader:
            for x in runs:
                _, dp = model(x.to(device, non_blocking=True))
                total += dp.double().sum(dim=(0, 2, 3))
                count += dp.shape[0] * dp.shape[2] * dp.shape[3]
                bar.update(len(x))
    mean = (total.cpu() / max(count, 1)).float()
    ms.running_mean.copy_(mean.to(ms.running_mean.device))
    return mean


def _collate(batch: list[dict]) -> dict:
    out = {k: torch.stack([b[k] for b in batch]) for k in ("img", "bg_pos", "fg_pos", "neg")}
    out["image_id"] = [b["image_id"] for b in batch]
    return out


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


ARCH_KEYS = ("irn.backbone", "irn.radius")  # a checkpoint of another IRNet is not resumed


def train_irn(cfg: dict, paths: RunPaths) -> None:
    """Step ``train-irn``: train IRNet on the IR labels of ``irn.train_split``.

    Args:
        cfg: run configuration (``irn`` section).
        paths: reads ``paths.ir_label``; writes ``paths.irn`` (``last.pt``, ``final.pt``,
            ``train.log``) and marks it done.
    """
    out = paths.irn
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(int(get(cfg, "seed")))
    device = resolve_device(cfg)
    split = get(cfg, "irn.train_split")
    base = common.build_split(cfg, split, paths, train=False)
    missing = [i for i in base.image_ids if not (paths.ir_label / f"{i}.png").exists()]
    if missing:
        raise FileNotFoundError(f"train-irn: {len(missing)} IR labels of split '{split}' are missing, e.g. "
                                f"{paths.ir_label / (missing[0] + '.png')}; run make-ir-label first")
    radius = int(get(cfg, "irn.radius"))
    ds = AffinityDataset(base, paths.ir_label, int(get(cfg, "irn.crop_size")), radius,
                         get(cfg, "irn.rescale"), bool(get(cfg, "irn.hflip")))
    bs = int(get(cfg, "irn.batch_size"))
    drop_last = len(ds) >= bs
    steps_per_epoch = len(ds) // bs if drop_last else 1
    epochs = int(get(cfg, "irn.epochs"))
    max_step = steps_per_epoch * epochs
    workers = int(get(cfg, "num_workers"))
    # Shuffling and the workers' seeds come from ``gen`` at the start of every epoch (workers are
    # not persistent); with the global RNG it is saved in last.pt, so a resumed epoch repeats.
    gen = torch.Generator().manual_seed(int(get(cfg, "seed")))
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, drop_last=drop_last,
                        collate_fn=_collate, pin_memory=device.type == "cuda", generator=gen,
                        worker_init_fn=_worker_init, persistent_workers=False)

    model = IRNet(get(cfg, "irn.backbone"), get(cfg, "irn.pretrained_path")).to(device)
    lr, wd = float(get(cfg, "irn.lr")), float(get(cfg, "irn.weight_decay"))
    edge_params, dp_params = model.trainable_parameters()
    groups = [{"params": edge_params, "lr": lr, "base_lr": lr},
              {"params": dp_params, "lr": lr * float(get(cfg, "irn.dp_lr_mult")),
               "base_lr": lr * float(get(cfg, "irn.dp_lr_mult"))}]
    opt = torch.optim.SGD(groups, lr=lr, weight_decay=wd, momentum=float(get(cfg, "irn.momentum")))

    last = out / "last.pt"
    ckpt = load_checkpoint(last, cfg=cfg, arch_keys=ARCH_KEYS, model=model, optimizer=opt)
    start_epoch, step = (int(ckpt["epoch"]), int(ckpt["step"])) if ckpt else (0, 0)
    if ckpt:
        gen.set_state(ckpt["gen_rng"])
    amp = bool(get(cfg, "irn.amp")) and device.type == "cuda"
    log = TrainLog(out / "train.log", "train-irn")
    log_every = int(get(cfg, "irn.log_every"))
    bar = tqdm(total=max_step, initial=step, desc="train-irn", unit="step")
    model.train()
    for epoch in range(start_epoch, epochs):
        for it, batch in enumerate(loader):
            if it >= steps_per_epoch:
                break
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * poly_factor(step, max_step)
            img = batch["img"].to(device, non_blocking=True)
            labels = [batch[k].to(device, non_blocking=True) for k in ("bg_pos", "fg_pos", "neg")]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                edge, dp = model(img)
            losses = irn_loss(edge.float(), dp.float(), *labels, radius=radius)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            step += 1
            bar.update()
            if step % log_every == 0 or step == 1 or step == max_step:  # reading the losses waits for the GPU
                read = torch.stack([v.detach() for v in losses.values()]).tolist()  # one copy to the host
                vals = {k: round(v, 5) for k, v in zip(losses, read)}
                bar.set_postfix(loss=vals["total"])
                log.write({"epoch": epoch, "step": step, "lr": opt.param_groups[0]["lr"], **vals}, echo=False)
        save_checkpoint(last, cfg=cfg, arch_keys=ARCH_KEYS, model=model, optimizer=opt, epoch=epoch + 1,
                        step=step, gen_rng=gen.get_state(), backbone=model.arch, radius=radius)
    bar.close()

    eval_ds = AffinityDataset(base, paths.ir_label, ds.crop_size, radius, augment=False)
    mean = estimate_displacement_mean(model, eval_ds, device, get(cfg, "irn.dp_mean_images"), bs, workers)
    atomic_torch_save({"model": model.state_dict(), "backbone": model.arch, "radius": radius,
                       "dp_mean": mean, "steps": step}, out / "final.pt")
    paths.mark_done(out)
