"""What the three training steps share: seeding, the learning-rate schedule, resumable
checkpoints and the training log.

The steps (``train-cls``, ``train-irn``, ``train-seg``; Viniavskyi et al., AIME 2020, and
Ahn et al., CVPR 2019 for IRNet) differ in their models and losses only. Each one:

* seeds every source of randomness from the run's seed (:func:`seed_everything`);
* sets the learning rate with one poly schedule (:func:`poly_factor`), per iteration or per
  epoch;
* writes ``last.pt`` after every epoch with :func:`save_checkpoint` (model, optimizer,
  GradScaler, every RNG state, the config keys that shape the model) and resumes from it
  with :func:`load_checkpoint`, which refuses a checkpoint of another architecture;
* appends one JSON line per record to ``train.log`` through :class:`TrainLog`, which also
  prints it above the progress bar on the main process.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import get
from .files import atomic_torch_save

__all__ = ["seed_everything", "poly_factor", "fused_on_cuda", "rng_state", "set_rng_state", "save_checkpoint",
           "load_checkpoint", "TrainLog"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_factor(step: int, total: int, power: float = 0.9) -> float:
    """The poly schedule's learning-rate factor ``(1 - step / total) ** power``.

    Args:
        step: iterations (or epochs) done; clipped to ``total``.
        total: iterations (or epochs) of the whole run (at least 1 is used).
        power: the exponent (0.9 in every paper this package follows).
    """
    total = max(int(total), 1)
    return max(0.0, 1.0 - min(step, total) / total) ** power


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy, torch CPU and CUDA), as tensors and plain
    values (so that ``torch.load(..., weights_only=True)`` reads it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def fused_on_cuda(model: torch.nn.Module) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is on CUDA, else ``{}`` (the default, foreach).

    A fused SGD/Adam/AdamW step takes the GradScaler's scale and inf flag on the device; with
    any other optimizer ``GradScaler.step`` reads the flag, and the host waits for the GPU in
    every iteration.
    """
    params = list(model.parameters())
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


def _architecture(cfg: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: get(cfg, k) for k in keys}


def save_checkpoint(path: str | Path, *, cfg: dict, arch_keys: tuple[str, ...], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, epoch: int, scaler: torch.amp.GradScaler | None = None,
                    **extra: Any) -> None:
    """Write a resumable ``last.pt`` atomically.

    Args:
        path: the checkpoint file.
        cfg: the run configuration; the values of ``arch_keys`` are stored for the resume check.
        arch_keys: dotted config keys that shape the model's state dict.
        model: the model (unwrapped from DDP).
        optimizer: its optimizer.
        epoch: epochs finished.
        scaler: the AMP GradScaler, or None.
        **extra: further entries (e.g. a scheduler's state, the iteration count).
    """
    atomic_torch_save({"epoch": int(epoch), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                       "rng": rng_state(), "architecture": _architecture(cfg, arch_keys), "config": cfg,
                       **extra}, path)


def load_checkpoint(path: str | Path, *, cfg: dict, arch_keys: tuple[str, ...], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
                    restore_rng: bool = True) -> dict[str, Any] | None:
    """Resume from a :func:`save_checkpoint` file when it exists.

    Loads the model, optimizer and (when enabled) GradScaler states, and the RNG states.

    Args:
        path: the checkpoint file; nothing happens when it does not exist.
        cfg, arch_keys: the current configuration and the keys that must match the checkpoint's.
        model, optimizer, scaler: restored in place.
        restore_rng: also restore the global RNG states.

    Returns:
        The checkpoint dict (``epoch`` and the ``extra`` entries), or None without a file.

    Raises:
        ValueError: the checkpoint was written for another architecture (named key by key).
    """
    path = Path(path)
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # RNG states stay on the CPU
    want, have = _architecture(cfg, arch_keys), ckpt.get("architecture", {})
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        raise ValueError(f"cannot resume from {path}: " + ", ".join(
            f"{k} is {old!r} there but {new!r} in the config" for k, (old, new) in diff.items())
            + f" (remove {path} to start over)")
    model.load_state_dict(ckpt["model"])
    impl = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for g, flags in zip(optimizer.param_groups, impl):  # as built for this device, not as saved
        g.update(flags)
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt


class TrainLog:
    """``train.log``: one JSON object per line, also printed on the main process.

    Args:
        path: the log file (appended to, so a resumed run continues it).
        step: the name printed before each line (e.g. ``train-cls``).
        enabled: False on every process but the main one.
    """

    def __init__(self, path: str | Path, step: str, enabled: bool = True) -> None:
        self.path, self.step, self.enabled = Path(path), step, enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], echo: bool = True, note: str = "") -> None:
        """Append ``record`` (with a ``time`` stamp) and print it as ``k=v`` pairs."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        if echo:
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            tqdm.write(f"[{self.step}] {text}{note}")
