"""Tests of wsss_fast.nn.DropBlock2d (DropBlock, Ghiasi et al., NeurIPS 2018)."""

from __future__ import annotations

import pytest
import torch

from wsss_fast.nn import DropBlock2d


def test_warmup_ramps_p_and_lives_in_state_dict(device):
    m = DropBlock2d(0.4, 3, warmup_steps=4).to(device)
    x = torch.rand(2, 8, 16, 16, device=device) + 0.5
    assert torch.equal(m(x), x)  # step 0: p = 0
    ps = []
    for _ in range(5):
        ps.append(float(m.current_p()))
        m(x)
    assert ps == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])
    assert int(m.step) == 6
    assert "step" in m.state_dict()
    m2 = DropBlock2d(0.4, 3, warmup_steps=4).to(device)
    m2.load_state_dict(m.state_dict())
    assert int(m2.step) == 6 and float(m2.current_p()) == pytest.approx(0.4)
    assert (m2(x) == 0).any()
    m2.eval()
    assert m2(x) is x
    assert int(m2.step) == 7  # eval forwards do not advance the warm-up


def test_no_warmup_drops_and_rescales(device):
    torch.manual_seed(0)
    m = DropBlock2d(0.3, 5, shared_mask=True, gamma_mode="simple").to(device)
    x = torch.ones(4, 6, 20, 20, device=device)
    y = m(x)
    assert (y == 0).any()
    assert torch.equal((y == 0).all(1), (y == 0).any(1))  # shared over channels
    torch.testing.assert_close(y.double().mean(), torch.tensor(1.0, dtype=torch.float64, device=device))
    assert int(m.step) == 0


def _check_grad(x, y, g):
    """Something was dropped and something kept; ``x.grad == g * y / x``: the upstream
    gradient times the forward's scale where kept, 0 where dropped."""
    dropped = y == 0
    assert dropped.any() and not dropped.all()
    scale = (y / x).detach()[~dropped]
    torch.testing.assert_close(scale, torch.full_like(scale, float(scale[0])))  # one scale per batch
    assert float(scale[0]) > 1
    torch.testing.assert_close(x.grad, (g * y / x).detach())
    assert (x.grad[dropped] == 0).all()


def test_gradient_flows(device):
    torch.manual_seed(0)
    m = DropBlock2d(0.3, 3).to(device)
    sign = torch.randint(0, 2, (2, 3, 10, 10), device=device) * 2 - 1
    x = ((torch.rand(2, 3, 10, 10, device=device) + 0.5) * sign).requires_grad_(True)  # |x| >= 0.5
    y = m(x)
    g = torch.randn_like(y)  # a non-uniform upstream gradient
    y.backward(g)
    _check_grad(x, y, g)


def test_extra_repr_and_errors():
    r = repr(DropBlock2d(0.1, 7, shared_mask=True, gamma_mode="simple", warmup_steps=10))
    assert r == "DropBlock2d(p=0.1, block_size=7, shared_mask=True, gamma_mode='simple', warmup_steps=10, step=0)"
    assert repr(DropBlock2d(0.2, 3)) == "DropBlock2d(p=0.2, block_size=3)"
    with pytest.raises(ValueError, match="p"):
        DropBlock2d(1.2, 3)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock2d(0.1, 0)
    with pytest.raises(ValueError, match="gamma_mode"):
        DropBlock2d(0.1, 3, gamma_mode="x")
    with pytest.raises(ValueError, match="warmup_steps"):
        DropBlock2d(0.1, 3, warmup_steps=-1)


@pytest.mark.parametrize("warmup", [0, 3])
def test_torch_compile_fullgraph(compiled_ops, device, warmup):
    torch._dynamo.reset()
    m = DropBlock2d(0.3, 3, warmup_steps=warmup).to(device)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = (torch.rand(2, 4, 12, 12, device=device) + 0.5).requires_grad_(True)
    outs = [cm(x) for _ in range(5)]
    assert int(m.step) == (5 if warmup else 0)
    assert (outs[-1] == 0).any()
    if warmup:
        assert torch.equal(outs[0], x)  # p ramps from 0
    g = torch.randn_like(x)
    outs[-1].backward(g)
    _check_grad(x, outs[-1], g)
