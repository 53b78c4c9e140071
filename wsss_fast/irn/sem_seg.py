"""Step 2 output: random-walk pseudo labels, and their evaluation.

IRNet's ``make_sem_seg_labels`` (Ahn et al., CVPR 2019) over data sets: the walk of
:mod:`wsss_fast.irn.walk` (radius 5, beta 10, 256 steps) and a constant background score
(0.25) for every image with classes. Set to
``val``, ``sem_seg.steps`` / ``bg_thres`` / ``edge_mask`` are chosen on val first
(:func:`walk_settings`), since IRNet's constants fit its VOC CAMs. ``sem_seg.edge_mask``:
the walk starts from ``cam * (1 - boundary)`` as IRNet's (``true``), or from the CAM
(``false``: thin objects that the boundary map covers whole keep their maps).

Batched by working size, one batch in flight; images without classes are not read and get
empty maps, written on the host. Shards run in separate processes, one per GPU (or
``sem_seg.processes`` on CPU). Resumable.

Outputs: ``paths.sem_seg/<id>.png`` (uint8 labels at the ORIGINAL resolution) and
``paths.rw/<id>.npy`` (fp16 ``[K, H, W]`` soft maps at the working resolution, the
channels in the order of the CAM file's ``keys``).
"""

from __future__ import annotations

import itertools
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import get
from ..engine.dist import env_rank_world, resolve_device
from ..engine.files import (BackgroundWriter, atomic_write_bytes, load_cam_file, read_json, read_png, write_npy,
                            write_png)
from ..engine.paths import RunPaths
from ..engine.transfer import HostCopy, InFlight, to_device
from ..metrics.segmentation import best_and_label
from . import common
from .common import as_list
from .model import EdgeDisplacement, load_irnet
from .walk import _edge_mask, _InferDataset, _labels, _walk_soft, _workers


def _outputs(paths: RunPaths, image_id: str) -> tuple[Path, Path]:
    return paths.sem_seg / f"{image_id}.png", paths.rw / f"{image_id}.npy"


def _done(paths: RunPaths, image_id: str) -> bool:
    return all(p.exists() for p in _outputs(paths, image_id))


@torch.no_grad()
def _launch(model: EdgeDisplacement, items: list[dict], cfg: dict,
            device: torch.device) -> tuple[list[dict], HostCopy]:
    """Queue a batch's walk, its labels at the original size on ``device`` and one copy of maps
    and labels to the host; nothing waits for the device."""
    steps = int(get(cfg, "sem_seg.steps"))
    bg_thres = float(get(cfg, "sem_seg.bg_thres"))
    mask = _edge_mask(get(cfg, "sem_seg.edge_mask"))
    softs = _walk_soft(model, items, cfg, device, [steps], (mask,), host=False)[(mask, steps)]
    labels = [_labels(soft.float(), it["keys"], bg_thres, it["orig_size"]) for it, soft in zip(items, softs)]
    return items, HostCopy([*softs, *labels])


def _finish(paths: RunPaths, writer: BackgroundWriter, pending: tuple[list[dict], HostCopy]) -> None:
    """Wait for a launched batch's copy and queue its files on ``writer``."""
    items, copy = pending
    host = copy.wait()
    for it, soft, label in zip(items, host[: len(items)], host[len(items):]):
        png, npy = _outputs(paths, it["id"])
        writer.submit(write_npy, soft.numpy(), npy)
        writer.submit(write_png, label.numpy(), png)


def _write_empty(item: dict, paths: RunPaths, writer: BackgroundWriter) -> None:
    """The files of an image without classes, made on the host: no maps, all background."""
    png, npy = _outputs(paths, item["id"])
    writer.submit(write_npy, np.zeros((0, *item["size"]), np.float16), npy)
    writer.submit(write_png, np.zeros(item["orig_size"], np.uint8), png)


def run_shard(cfg: dict, root: str, split: str, indices: list[int], device: str,
              show_progress: bool = True) -> None:
    """Write the pseudo labels of ``indices`` of ``split`` (one shard, one device).

    Images of one working size are walked ``sem_seg.batch_size`` at a time, one batch in flight
    (:class:`~wsss_fast.engine.transfer.InFlight`): a batch's files are queued once the next
    batch is queued on the device. Images without classes are written at once, on the host.
    """
    paths = RunPaths(root)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    base = common.build_split(cfg, split, paths, train=False)  # the loader reads no masks
    net = load_irnet(paths.irn / "final.pt", map_location="cpu")
    model = EdgeDisplacement(net.to(dev).eval(), displacement=False)  # the walk uses the boundaries
    bs = max(1, int(get(cfg, "sem_seg.batch_size")))
    loader = DataLoader(_InferDataset(base, paths, indices), batch_size=1, shuffle=False, num_workers=_workers(cfg),
                        collate_fn=list, pin_memory=dev.type == "cuda")  # items stay dicts
    pending: dict[tuple, list[dict]] = {}
    bar = tqdm(total=len(indices), desc=f"sem-seg {split} {device}", unit="img", disable=not show_progress)
    with BackgroundWriter() as writer, InFlight(partial(_finish, paths, writer)) as flight:
        for n, (item,) in enumerate(loader, 1):
            if item["cam"].shape[0] == 0:  # no classes: no network, written at once
                _write_empty(item, paths, writer)
            else:
                pending.setdefault(tuple(item["size"]), []).append(item)  # (older torch pins tuples as lists)
            for key in [k for k, v in pending.items() if len(v) >= bs or n == len(loader)]:  # the rest with the last
                flight.push(_launch(model, pending.pop(key), cfg, dev))
            if n == len(loader):  # inside the loader's last iteration, where a profile times the loop
                flight.drain()
            bar.update(1)
    bar.close()


def _shard_main(rank: int, cfg: dict, root: str, split: str, shards: list[list[int]], devices: list[str],
                threads: int) -> None:
    torch.set_num_threads(threads)
    run_shard(cfg, root, split, shards[rank], devices[rank], show_progress=rank == 0)


def _plan(cfg: dict) -> list[str]:
    """One device name per shard process."""
    dev = resolve_device(cfg)
    n = get(cfg, "sem_seg.processes")
    if dev.type == "cuda":
        gpus = list(range(torch.cuda.device_count())) if dev.index is None else [dev.index]
        n = len(gpus) if n is None else int(n)
        return [f"cuda:{gpus[i % len(gpus)]}" for i in range(max(1, n))]
    return ["cpu"] * max(1, int(n or 1))


_SWEPT = ("miou_all", "miou_pos", "dice")  # the figures of a threshold sweep


def _swept(ev) -> dict:
    return {k: v for k, v in ev.result().items() if k in _SWEPT}


def _candidates(cfg: dict) -> tuple[list[int], list[float], list[bool]]:
    """The (steps, bg_thres, edge_mask) values make-sem-seg chooses from: a set value is the only one."""
    steps, thres, mask = get(cfg, "sem_seg.steps"), get(cfg, "sem_seg.bg_thres"), get(cfg, "sem_seg.edge_mask")
    steps = [int(s) for s in get(cfg, "sem_seg.val_steps")] if steps == "val" else [int(steps)]
    thres = [float(t) for t in get(cfg, "sem_seg.eval_thresholds")] if thres == "val" else [float(thres)]
    masks = [True, False] if mask == "val" else [_edge_mask(mask)]
    return steps, thres, masks


def tune_walk(cfg: dict, paths: RunPaths, device: str) -> dict:
    """Choose the walk's settings on val (``sem_seg.steps`` / ``bg_thres`` / ``edge_mask: val``).

    One boundary map per val image, the walk for every candidate edge mask and number of
    steps (``sem_seg.val_steps``), every threshold of ``sem_seg.eval_thresholds``, scored by
    ``sem_seg.eval_metric`` (the first best in the order of the lists, mask ``true`` first).
    Under ``torchrun`` each rank walks the val images ``i % WORLD_SIZE == RANK`` and the ranks
    pool their counts (:func:`object_group`): every rank makes the same choice.

    Returns:
        ``{"steps", "bg_thres", "edge_mask", "metric", "score", "grid": {steps: {thres:
        {miou_all, miou_pos, dice}}}}``: ``grid`` for the chosen mask; with both masks tried,
        ``"grids": {"true": grid, "false": grid}`` as well.
    """
    from ..engine.dist import object_group

    steps_list, thres_list, masks = _candidates(cfg)
    metric = str(get(cfg, "sem_seg.eval_metric"))
    if metric not in _SWEPT:
        raise ValueError(f"sem_seg.eval_metric must be miou_all | miou_pos | dice, got {metric!r}")
    base = common.build_split(cfg, "val", paths, train=False)
    missing = [i for i in base.image_ids if not paths.cam_file(str(i)).exists()]
    if missing:
        raise FileNotFoundError(f"make-sem-seg: choosing sem_seg.steps / bg_thres / edge_mask on val needs the "
                                f"val CAMs; {paths.cam_file(str(missing[0]))} is missing (add val to cam.splits "
                                "or give all three as values)")
    with object_group() as ctx:
        share = list(range(len(base.image_ids)))[ctx.rank::ctx.world_size] if ctx else None
        evals = _val_counts(cfg, paths, device, base, share, steps_list, thres_list, masks,
                            show_progress=ctx is None or ctx.is_main)
        if ctx:  # pooled in rank order: every rank merges the same parts the same way
            parts = ctx.all_gather_object(evals)
            evals = {k: parts[0][k] for k in evals}
            for part, k in itertools.product(parts[1:], evals):
                evals[k].merge(part[k])
    grids: dict = {}
    best = (-np.inf,)
    for (m, n, t), ev in evals.items():
        r = _swept(ev)
        grids.setdefault(str(m).lower(), {}).setdefault(str(n), {})[f"{t:g}"] = r
        best = max(best, (float(np.nan_to_num(r[metric], nan=-1.0)), m, n, t), key=lambda b: b[0])
    res = {"steps": best[2], "bg_thres": best[3], "edge_mask": best[1], "metric": metric, "score": best[0],
           "grid": grids[str(best[1]).lower()]}
    if len(masks) > 1:
        res["grids"] = grids
    return res


def _val_counts(cfg: dict, paths: RunPaths, device: str, base, indices: list[int] | None,
                steps_list: list[int], thres_list: list[float], masks: list[bool],
                show_progress: bool = True) -> dict:
    """``{(edge_mask, steps, bg_thres): SegEvaluator}`` over the val images ``indices`` (all: None).

    Every candidate's threshold sweep of a batch is counted on the walk's device and copied to
    the host once per batch (:class:`~wsss_fast.metrics.BatchedSweeps`)."""
    from ..metrics import BatchedSweeps, SegEvaluator

    n_cls = int(base.num_classes) + 1
    evals = {(m, n, t): SegEvaluator(n_cls) for m in masks for n in steps_list for t in thres_list}
    dev = torch.device(device)
    net = load_irnet(paths.irn / "final.pt", map_location="cpu").to(dev).eval()
    model = EdgeDisplacement(net, displacement=False)
    sweeps = BatchedSweeps(thres_list, dev)
    indices = list(range(len(base.image_ids))) if indices is None else indices
    loader = DataLoader(_InferDataset(base, paths, indices, with_mask=True),
                        batch_size=max(1, int(get(cfg, "sem_seg.batch_size"))), shuffle=False,
                        num_workers=_workers(cfg), collate_fn=list,  # sizes and class counts differ
                        pin_memory=dev.type == "cuda")
    for items in tqdm(loader, desc="sem-seg: choose the walk on val", unit="batch", disable=not show_progress):
        for group in {tuple(it["size"]): None for it in items}:
            same = [it for it in items if tuple(it["size"]) == group]
            softs = _walk_soft(model, same, cfg, dev, steps_list, tuple(masks), host=False)
            for j, it in enumerate(same):
                gt = it["gt"]
                if gt is None:
                    raise ValueError(f"make-sem-seg: val image {it['id']} has no mask; give sem_seg.steps, "
                                     "bg_thres and edge_mask as values")
                positive = bool(np.asarray(base.labels[it["index"]]).any())
                gt_dev = to_device(gt, dev)
                for m, n in itertools.product(masks, steps_list):  # every threshold in one pass, on dev
                    best, label = best_and_label(softs[(m, n)][j].float(), it["keys"], tuple(gt.shape))
                    sweeps.add([evals[(m, n, t)] for t in thres_list], best, label, gt_dev, positive,
                               f"make-sem-seg: val image {it['id']}")
        sweeps.flush()  # the batch's one wait
    return evals


def walk_settings(cfg: dict, paths: RunPaths, device: str | None = None) -> dict:
    """``sem_seg.steps``, ``bg_thres`` and ``edge_mask`` as values, chosen on val where the config says ``val``.

    The choice is stored in ``paths.sem_seg/tune.json`` and reused while the candidates are
    the same. ``device``: where to tune (default: the first of the run's devices).

    Returns:
        ``{"steps": int, "bg_thres": float, "edge_mask": bool, "source": str, ...}``.
    """
    steps, thres, mask = get(cfg, "sem_seg.steps"), get(cfg, "sem_seg.bg_thres"), get(cfg, "sem_seg.edge_mask")
    if "val" not in (steps, thres, mask):
        return {"steps": int(steps), "bg_thres": float(thres), "edge_mask": _edge_mask(mask),
                "source": "sem_seg.steps, sem_seg.bg_thres, sem_seg.edge_mask"}
    cand = dict(zip(("steps", "bg_thres", "edge_mask"), _candidates(cfg)), metric=str(get(cfg, "sem_seg.eval_metric")))
    f = paths.sem_seg / "tune.json"
    old = read_json(f)
    if old is not None and old.get("candidates") == cand:
        return old
    res = tune_walk(cfg, paths, device or _plan(cfg)[0])
    res = {**res, "candidates": cand, "source": f"best on val by sem_seg.eval_metric ({res['metric']})"}
    paths.sem_seg.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(res, indent=2) + "\n").encode(), f)  # the same bytes from every rank
    if env_rank_world()[0] == 0:
        print(f"make-sem-seg: walk of {res['steps']} steps, bg_thres {res['bg_thres']:g}, edge mask "
              f"{str(res['edge_mask']).lower()} (val {res['metric']} {res['score']:.4f})")
    return res


def make_sem_seg(cfg: dict, paths: RunPaths, splits: list[str] | None = None) -> None:
    """Step ``make-sem-seg``: pseudo labels for every image of ``sem_seg.splits``.

    One command uses every visible GPU by itself (one spawned process per device,
    ``sem_seg.processes``). Under torchrun (``WORLD_SIZE > 1``) each process labels its share
    of the images (``RANK``) on its ``rank_device``, as make-cam does, after the ranks pooled
    the walk's choice on val (:func:`tune_walk`); the last one to finish marks the step done.

    Args:
        cfg: run configuration (``sem_seg`` section; ``val`` settings: :func:`walk_settings`).
        paths: reads ``paths.cam`` and ``paths.irn/final.pt``; writes ``paths.sem_seg`` and
            ``paths.rw``.
        splits: overrides ``sem_seg.splits``.
    """
    from ..engine.dist import rank_device

    ckpt = paths.irn / "final.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"make-sem-seg: IRNet weights not found: {ckpt} (run train-irn first)")
    for folder in (paths.sem_seg, paths.rw):
        folder.mkdir(parents=True, exist_ok=True)
    devices = _plan(cfg)
    rank, world, _ = env_rank_world()
    chosen = walk_settings(cfg, paths, str(rank_device(cfg)) if world > 1 else devices[0])
    cfg = {**cfg, "sem_seg": {**get(cfg, "sem_seg"), **{k: chosen[k] for k in ("steps", "bg_thres", "edge_mask")}}}
    every_id: list[str] = []
    for split in as_list(splits if splits is not None else get(cfg, "sem_seg.splits")):
        base = common.build_split(cfg, split, paths, train=False)
        ids = [str(i) for i in base.image_ids]
        every_id += ids
        missing = [i for i in ids if not paths.cam_file(i).exists()]
        if missing:
            raise FileNotFoundError(
                f"make-sem-seg: {len(missing)} CAM files of split '{split}' are missing, e.g. "
                f"{paths.cam_file(missing[0])}; run make-cam for it (or set sem_seg.splits)")
        todo = [i for i, image_id in enumerate(ids) if not _done(paths, image_id)]
        if world > 1:  # torchrun: this process's share, on its own device
            mine = [i for i in todo if i % world == rank]  # by image index: stable across restarts
            if mine:
                run_shard(cfg, str(paths.root), split, mine, str(rank_device(cfg)), show_progress=rank == 0)
            continue
        if not todo:
            continue
        n = min(len(devices), len(todo))
        if n <= 1:
            run_shard(cfg, str(paths.root), split, todo, devices[0])
            continue
        shards = [todo[k::n] for k in range(n)]
        threads = max(1, (os.cpu_count() or 1) // n) if devices[0] == "cpu" else max(1, torch.get_num_threads())
        torch.multiprocessing.start_processes(_shard_main, args=(cfg, str(paths.root), split, shards, devices[:n],
                                                                 threads), nprocs=n, join=True,
                                              start_method="spawn")
    # checked once this process's share of every split is written (as make-cam: under torchrun the
    # last rank to get here sees every file)
    if all(_done(paths, image_id) for image_id in every_id):
        paths.mark_done(paths.sem_seg)


def eval_sem_seg(cfg: dict, paths: RunPaths, splits: list[str] | None = None) -> dict:
    """Step ``eval-sem-seg``: mIoU (all / positive images) and Dice of the pseudo labels, and a
    sweep of the background threshold from the stored soft maps.

    Writes ``paths.sem_seg/eval.json``::

        {split: {"labels": {miou_all, miou_pos, dice, iou_all, iou_pos, n_images, n_pos},
                 "sweep": {"0.25": {miou_all, miou_pos, dice}, ...},
                 "best_bg_thres": t (by miou_all), "bg_thres": the PNGs' threshold}}

    Splits without ground truth masks are skipped.
    """
    from ..metrics import SegEvaluator, add_sweep

    thresholds = [float(t) for t in get(cfg, "sem_seg.eval_thresholds")]
    bg_thres = get(cfg, "sem_seg.bg_thres")
    if bg_thres == "val":  # the PNGs' threshold, as make-sem-seg chose it
        f = paths.sem_seg / "tune.json"
        bg_thres = json.loads(f.read_text())["bg_thres"] if f.exists() else None
    report: dict = {}
    for split in as_list(splits if splits is not None else get(cfg, "sem_seg.splits")):
        base = common.build_split(cfg, split, paths, train=False)
        n_cls = int(base.num_classes) + 1
        names = ["background", *list(getattr(base, "class_names", []) or [])]
        names = names if len(names) == n_cls else None
        ev = SegEvaluator(n_cls, class_names=names)
        sweep = {t: SegEvaluator(n_cls, class_names=names) for t in thresholds}
        n_gt = 0
        for i in tqdm(range(len(base.image_ids)), desc=f"eval-sem-seg {split}", unit="img"):
            gt = base.load_mask(i)
            if gt is None:
                continue
            n_gt += 1
            image_id = str(base.image_ids[i])
            png, npy = _outputs(paths, image_id)
            if not png.exists() or not npy.exists():
                raise FileNotFoundError(f"eval-sem-seg: pseudo label missing: {png if not png.exists() else npy} "
                                        "(run make-sem-seg for this split)")
            positive = bool(np.asarray(base.labels[i]).any())
            gt = np.asarray(gt, dtype=np.uint8)
            ev.add(read_png(png), gt, positive)
            keys = np.asarray(load_cam_file(paths.cam_file(image_id))["keys"], dtype=np.int64)
            best, label = best_and_label(np.load(npy).astype(np.float32), keys, gt.shape)
            add_sweep(list(sweep.values()), best, label, gt, list(sweep), positive)
        if n_gt == 0:
            continue
        res = {t: _swept(e) for t, e in sweep.items()}
        best_t = max(res, key=lambda t: (np.nan_to_num(res[t]["miou_all"], nan=-1.0)))
        report[split] = {"labels": ev.result(), "sweep": {f"{t:g}": r for t, r in res.items()},
                         "best_bg_thres": best_t, "bg_thres": bg_thres}
    paths.sem_seg.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(json.dumps(report, indent=2).encode(), paths.sem_seg / "eval.json")
    for split, r in report.items():
        lab = r["labels"]
        print(f"[eval-sem-seg] {split}: mIoU {lab['miou_all']:.4f}  mIoU(pos) {lab['miou_pos']:.4f}  "
              f"Dice {lab['dice']:.4f}  best bg_thres {r['best_bg_thres']:g}")
    return report
