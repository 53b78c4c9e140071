"""Host <-> device copies that do not make the host wait, and one batch in flight.

A blocking copy to or from a GPU (``.cpu()``, ``.to("cuda")`` from pageable memory, a value
read) waits for every kernel queued before it, so the GPU idles while the host prepares the
next batch. The per-image steps (make-cam, make-sem-seg, predict-seg) therefore queue a
batch's work and its copy to the host (:class:`HostCopy`), queue the next batch, and only
then wait for the first one's results (:class:`InFlight`), the way a CUDA stream overlaps
copies and kernels ("How to Overlap Data Transfers in CUDA C/C++", NVIDIA, 2012). On the CPU
every copy is immediate and the results are the same.
"""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

import torch
from torch import Tensor

__all__ = ["HostCopy", "InFlight", "to_device", "to_host"]

R = TypeVar("R")


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``; a CPU tensor goes to a GPU from pinned memory, a queued copy the host
    does not wait for (pinned already: no extra copy)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


class HostCopy:
    """Tensors on their way to the host: the copies are queued when it is made, :meth:`wait` waits.

    The tensors of each dtype are flattened into one buffer and copied once; from a GPU the
    copy goes into pinned memory, queued on the current stream with an event after it, so
    :meth:`wait` waits for this batch's work only, not for what was queued since.

    Args:
        tensors: any shapes and dtypes, all on one device.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self._shapes = [t.shape for t in tensors]
        self._event: torch.cuda.Event | None = None
        self._groups: list[tuple[list[int], Tensor]] = []
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(f"HostCopy: tensors must share one device, got {sorted(map(str, devices))}")
        for dtype, idx in by_dtype.items():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
            if flat.is_cuda:
                host = torch.empty(flat.shape, dtype=dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
            else:
                host = flat
            self._groups.append((idx, host))
        if devices and next(iter(devices)).type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(next(iter(devices))))

    def ready(self) -> bool:
        """Whether the copies are done (never waits)."""
        return self._event is None or self._event.query()

    def wait(self) -> list[Tensor]:
        """The CPU tensors, in the order given (views of one buffer per dtype)."""
        if self._event is not None:
            self._event.synchronize()
        out: list[Tensor] = [torch.empty(0)] * len(self._shapes)
        for idx, host in self._groups:
            parts = host.split([self._shapes[i].numel() for i in idx])
            for i, part in zip(idx, parts):
                out[i] = part.view(self._shapes[i])
        return out


def to_host(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Tensors on the CPU, one copy per dtype and one wait for all of them.

    Args:
        tensors: any shapes and dtypes, one device.

    Returns:
        CPU tensors of the same shapes, in order (views of one buffer per dtype).
    """
    return HostCopy(tensors).wait()


class InFlight(Generic[R]):
    """One batch in flight: a batch is finished once the next one is queued.

    ``launch`` a batch (queue its device work and its :class:`HostCopy`), :meth:`push` what
    it returned: the batch pushed before it is finished then (``finish`` waits for its copy
    and hands the results on, e.g. to writer threads), so the host fetches and queues the next
    batch while the device still computes this one. :meth:`drain` finishes the last one; the
    ``with`` block drains on a normal exit. At most two batches' results are held at once.

    Args:
        finish: ``pending -> None``, called in the order of the pushes.
    """

    def __init__(self, finish: Callable[[R], None]) -> None:
        self._finish = finish
        self._pending: list[R] = []

    def push(self, pending: R) -> None:
        """Hold ``pending``; finish the one held before."""
        self._pending.append(pending)
        if len(self._pending) > 1:
            self._finish(self._pending.pop(0))

    def drain(self) -> None:
        """Finish the held batch, if any."""
        while self._pending:
            self._finish(self._pending.pop(0))

    def __enter__(self) -> "InFlight[R]":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.drain()
        self._pending.clear()
