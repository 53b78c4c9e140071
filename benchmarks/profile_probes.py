"""Timing probes of benchmarks/pipeline_profile.py: a DataLoader that times every batch (and
cuts training loaders to ``max_iters`` batches), a GPU-utilization sampler, process CPU time,
the machine, and the cost of a DICOM decode against a decoded-cache hit."""

from __future__ import annotations

import collections
import os
import platform
import resource
import shutil
import subprocess
import threading
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


class ProbedLoader(DataLoader):
    """A DataLoader that records, per batch, how long the loop waited for it and how many images
    it held; a training loader (shuffled or batch-sampled) stops after ``max_iters`` batches.

    With ``trace_batches`` K > 0, the first loader of a step (``registry``) to pass its first
    batch runs ``torch.profiler`` over its next K batches (:func:`trace_summary`), and counts
    where they wait for the GPU (:class:`SyncSites`); its steady state then starts after them
    when two or more batches follow."""

    registry: list["ProbedLoader"] = []
    max_iters: int | None = None
    trace_batches: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.training = isinstance(self.sampler, RandomSampler) or kwargs.get("batch_sampler") is not None
        self.limit = self.max_iters if self.training else None
        self.batches: list[tuple[float, float, int]] = []  # (requested, received, images)
        self.end: float | None = None
        self.trace: dict[str, Any] | None = None
        self.traced = 0  # batches under the profiler
        ProbedLoader.registry.append(self)

    def __len__(self) -> int:
        n = super().__len__()
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self):
        it = super().__iter__()
        k, prof, t_start, syncs = 0, None, 0.0, None
        try:
            while self.limit is None or k < self.limit:
                if k == 1 and self.trace_batches > 0 and len(self) > 1 and not any(ld.traced for ld in self.registry):
                    prof, t_start, self.traced, syncs = _profiler(), time.perf_counter(), -1, SyncSites()
                    try:
                        prof.start()
                        syncs.start()
                    except Exception as e:  # no profiler here: the profile goes on without a trace
                        syncs.stop()
                        prof, self.traced, self.trace = None, 1, {"error": repr(e)}
                if prof is not None and k == 1 + self.trace_batches:
                    self._stop_trace(prof, syncs, t_start, k - 1)
                    prof = None
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                self.batches.append((t0, time.perf_counter(), _count(batch)))
                k += 1
                yield batch
        finally:
            if prof is not None:
                self._stop_trace(prof, syncs, t_start, k - 1)
            self.end = time.perf_counter()

    def _stop_trace(self, prof: Any, syncs: "SyncSites", t_start: float, batches: int) -> None:
        self.traced = max(1, batches)
        sites = syncs.stop()
        try:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            prof.stop()
            self.trace = {**trace_summary(prof, time.perf_counter() - t_start, batches), "syncs": sites}
        except Exception as e:  # a profiler fault must not end the profile
            self.trace = {"error": repr(e)}

    def stats(self) -> dict[str, Any] | None:
        """Steady state (batches after the first, or after the traced ones when two or more
        follow them): images, seconds, data-wait share."""
        if not self.batches or self.end is None:
            return None
        skip = 1 + self.traced if self.traced > 0 and len(self.batches) >= 3 + self.traced else 1
        b = self.batches[skip:] if len(self.batches) > skip else self.batches
        span = max(self.end - b[0][0], 1e-9)
        return {"training": self.training, "batches": len(self.batches), "images": sum(x[2] for x in b),
                "seconds": span, "wait_s": sum(x[1] - x[0] for x in b), "window": (b[0][0], self.end),
                "first_batch_s": self.batches[0][1] - self.batches[0][0]}


class SyncSites:
    """Where a traced window waits for the GPU: ``torch.cuda.set_sync_debug_mode("warn")`` warns
    at every synchronizing call (a value read, a blocking copy); the warnings are counted by the
    file and line that made the call; the window's other warnings are passed on when it closes.
    Does nothing without CUDA."""

    def __init__(self) -> None:
        self._cm: Any = None
        self._log: list = []

    def start(self) -> None:
        if not torch.cuda.is_available():
            return
        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self, top: int | None = 8) -> list[dict[str, Any]] | None:
        """``[{"where": "file.py:line", "calls": n}]``, most calls first, the ``top`` ones (None:
        all); None without CUDA."""
        if self._cm is None:
            return None
        torch.cuda.set_sync_debug_mode("default")
        self._cm.__exit__(None, None, None)
        self._cm = None
        waits = [w for w in self._log if "synchroniz" in str(w.message)]
        for w in self._log:
            if w not in waits:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        sites = collections.Counter(f"{os.path.basename(w.filename)}:{w.lineno}" for w in waits)
        return [{"where": k, "calls": n} for k, n in sites.most_common(top)]


def _profiler() -> Any:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=acts)


def trace_summary(prof: Any, seconds: float, batches: int, top: int = 8) -> dict[str, Any]:
    """What a traced window spent: the GPU kernels' time as a share of the window (summed as
    ``torch.profiler``'s table sums its device time; None without a GPU), the main thread's time
    inside profiled ops, and the ``top`` ops by self CPU time (``cudaStreamSynchronize`` and
    ``aten::_local_scalar_dense`` are waits for the GPU; ``cudaEventSynchronize`` the wait for a
    batch's copy to the host, one batch in flight; ``cudaLaunchKernel`` launch overhead).

    Returns:
        ``{"batches", "seconds", "kernel_share", "host_ops_share", "host_top": [{"op", "self_ms",
        "calls"}]}``.
    """
    from torch.autograd import DeviceType

    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events
                    if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    host_us = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    seconds = max(seconds, 1e-9)
    return {"batches": batches, "seconds": seconds,
            "kernel_share": kernel_us / 1e6 / seconds if torch.cuda.is_available() else None,
            "host_ops_share": host_us / 1e6 / seconds,
            "host_top": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows]}


def trace_line(t: dict) -> str:
    """One line of a step's trace: kernel share of the window, host time in ops, the top 3 ops."""
    if "error" in t:
        return f"no trace ({t['error']})"
    kern = "" if t["kernel_share"] is None else f"GPU kernels {100 * t['kernel_share']:.0f}% of the window, "
    ops = ", ".join(f"{r['op']} {r['self_ms']:.0f} ms" for r in t["host_top"][:3])
    syncs = t.get("syncs")
    waits = "" if syncs is None else "; waits for the GPU: " + (
        ", ".join(f"{r['where']} x{r['calls']}" for r in syncs[:3]) if syncs else "none")
    return (f"{t['batches']} batches, {t['seconds']:.2f}s: {kern}host in ops {100 * t['host_ops_share']:.0f}% "
            f"({ops}){waits}")


def _count(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v) and v.ndim == 4:
                return int(v.shape[0])
        return 1
    if isinstance(batch, (list, tuple)) and batch:
        if torch.is_tensor(batch[0]):
            return int(batch[0].shape[0])
        return len(batch)
    return 1


class GpuSampler:
    """GPU utilization (% of time a kernel ran) sampled every 100 ms in the background: NVML
    (``pynvml``, from nvidia-ml-py) polled by a thread, else ``nvidia-smi -lms 100``."""

    def __init__(self, index: int = 0, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.source = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:  # no NVML: nvidia-smi's own sampling
            exe = shutil.which("nvidia-smi")
            if exe is None:
                return
            self.source = "nvidia-smi"
            self.proc = subprocess.Popen([exe, "-i", str(index), "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits", "-lms", str(int(interval * 1000))],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
            return
        self.source = "nvml"
        threading.Thread(target=self._poll, args=(pynvml, handle, interval), daemon=True).start()

    def _poll(self, pynvml, handle, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.perf_counter(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0))

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip()) / 100.0))
            except ValueError:
                pass

    def busy(self, windows: list[tuple[float, float]]) -> float | None:
        """Mean utilization over the time windows [(t0, t1), ...] (None without samples)."""
        v = [u for t, u in self.samples if any(t0 <= t <= t1 for t0, t1 in windows)]
        return float(np.mean(v)) if v else None

    def close(self) -> None:
        self._stop.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def _cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def machine_info(device: str) -> dict:
    """Python, torch, host cores, the device (and the GPU's name), the load average at the start."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": device, "load_avg_start": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def decode_benchmark(cfg: dict, paths: Any, n: int) -> dict:
    """Seconds per image of DICOM decode + resize to the working size, against a cache hit."""
    from wsss_fast.data import build_dataset
    from wsss_fast.data.cache import read_cached

    ds = build_dataset({**cfg, "dataset": {**cfg["dataset"], "cache": None}}, None, paths, train=False)
    n = min(n, len(ds))
    tr = ds.transform
    t = time.perf_counter()
    for i in range(n):
        tr(ds.load_image(i))
    decode = (time.perf_counter() - t) / n
    cached = build_dataset({**cfg, "dataset": {**cfg["dataset"], "cache": "auto"}}, None, paths, train=False)
    for i in range(n):  # fill (a no-op when the run already did)
        cached.load_image(i)
    t = time.perf_counter()
    for i in range(n):
        tr(cached.load_image(i))
    hit = (time.perf_counter() - t) / n
    size = read_cached(cached.cache_dir / f"{cached.image_ids[0]}.npz")[0].nbytes
    return {"images": n, "decode_resize_s": decode, "cache_hit_s": hit, "speedup": decode / max(hit, 1e-12),
            "cache_bytes_per_image": size}
