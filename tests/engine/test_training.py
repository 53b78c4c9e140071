"""The training steps' shared checkpoints: the optimizer's implementation follows the device."""

from __future__ import annotations

import pytest
import torch

from wsss_fast.engine.training import fused_on_cuda, load_checkpoint, save_checkpoint


def test_fused_on_cuda_only_when_every_parameter_is(device):
    model = torch.nn.Linear(3, 2).to(device)
    assert fused_on_cuda(model) == ({"fused": True} if device == "cuda" else {})
    assert fused_on_cuda(torch.nn.ReLU()) == {}  # nothing to step
    if device == "cuda":
        assert fused_on_cuda(torch.nn.Sequential(model, torch.nn.Linear(2, 2))) == {}  # one on the CPU


@pytest.mark.parametrize("saved, built", [({"foreach": True}, {"foreach": False}),
                                          ({"foreach": False}, {"foreach": True})])
def test_resume_keeps_the_optimizer_implementation_built_for_this_device(tmp_path, saved, built):
    """A checkpoint written by one implementation (fused on a GPU, foreach on the CPU) resumes
    with the one built here: the state comes back, the implementation flags do not."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **saved)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    cfg = {"seed": 0}
    save_checkpoint(tmp_path / "last.pt", cfg=cfg, arch_keys=(), model=model, optimizer=opt, epoch=1)

    fresh = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.0, **built)
    load_checkpoint(tmp_path / "last.pt", cfg=cfg, arch_keys=(), model=fresh, optimizer=opt2, restore_rng=False)
    group = opt2.param_groups[0]
    assert group["foreach"] is built["foreach"]
    assert (group["lr"], group["momentum"]) == (0.1, 0.9)  # the rest of the group is the checkpoint's
    torch.testing.assert_close(opt2.state[fresh.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])
