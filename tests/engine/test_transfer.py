"""wsss_fast.engine.transfer: copies to the host queued, not waited for, until ``wait``; each
tensor back in its place; one batch in flight."""

from __future__ import annotations

import pytest
import torch

from wsss_fast.engine.transfer import HostCopy, InFlight, to_device, to_host


def _tensors(device: str) -> list[torch.Tensor]:
    ts = [torch.full((1, 4, 5), float(i), device=device) for i in range(3)]
    ts += [torch.zeros((0, 4, 5), device=device), torch.arange(6.0, device=device).view(2, 3)]
    ts += [torch.arange(7, device=device).to(torch.uint8), torch.full((2, 2), 3.5, device=device).half(),
           torch.arange(5, device=device) - 9, torch.ones((3, 1), device=device).t()]  # mixed dtypes, a strided one
    return ts


def test_to_host_returns_each_tensor_in_order(device):
    """One copy per dtype, each tensor back in its place: equal shapes with different values,
    other shapes, empty ones, interleaved dtypes, a non-contiguous view."""
    ts = _tensors(device)
    got = to_host(ts)
    assert len(got) == len(ts) and to_host([]) == []
    for g, t in zip(got, ts):
        assert g.device.type == "cpu" and g.shape == t.shape and g.dtype == t.dtype
        torch.testing.assert_close(g, t.cpu(), rtol=0, atol=0)


def test_host_copy_rejects_two_devices():
    with pytest.raises(ValueError, match="one device"):
        HostCopy([torch.zeros(2), torch.zeros(2, device="meta")])


def test_host_copy_queues_and_waits_only_in_wait(device, host_reads):
    """Making a HostCopy never waits for the device (from a GPU: into pinned memory, an event
    after it); ``wait`` gives the values even after the sources were overwritten."""
    ts = _tensors(device)
    want = [t.cpu().clone() for t in ts]
    with host_reads(device) as made:
        copy = HostCopy(ts)
    assert made.count == 0, made.where
    for t in ts:  # queued after the copy: must not show in it
        t.add_(1)
    got = copy.wait()
    assert copy.ready()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    if device == "cuda":
        assert all(g.is_pinned() for g in got if g.numel())


def test_to_device_is_queued_from_pinned_memory(device, host_reads):
    t = torch.arange(12.0).view(3, 4)[:, ::2]
    with host_reads(device) as reads:
        d = to_device(t, device)
    assert reads.count == 0, reads.where
    assert d.device.type == device
    torch.testing.assert_close(d.cpu(), t, rtol=0, atol=0)


def test_in_flight_finishes_a_batch_after_the_next_is_pushed():
    """push(0), push(1) finishes 0, push(2) finishes 1, drain finishes 2: the host queues batch
    n + 1 before it waits for batch n; every batch is finished once, in order."""
    done: list[int] = []
    flight = InFlight(done.append)
    flight.push(0)
    assert done == []
    flight.push(1)
    assert done == [0]
    flight.push(2)
    assert done == [0, 1]
    flight.drain()
    assert done == [0, 1, 2]
    flight.drain()
    assert done == [0, 1, 2]


def test_in_flight_drains_on_exit_but_not_after_an_error():
    done: list[int] = []
    with InFlight(done.append) as flight:
        flight.push(5)
    assert done == [5]
    with pytest.raises(RuntimeError):
        with InFlight(done.append) as flight:
            flight.push(6)
            raise RuntimeError("launch failed")
    assert done == [5]
