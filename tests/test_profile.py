"""benchmarks/pipeline_profile.py: the probes (bounded training loaders, data-wait share), the
full-run image counts, and one tiny profile of the whole pipeline."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from wsss_fast.steps import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pipeline_profile", ROOT / "benchmarks" / "pipeline_profile.py")
prof = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prof)
import profile_report  # noqa: E402  (benchmarks/, on the path once pipeline_profile is loaded)


class _Slow(Dataset):
    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return {"image": torch.zeros(3, 4, 4), "i": i}


def _consume(loader, work: float = 0.0) -> int:
    n = 0
    for _ in loader:
        time.sleep(work)
        n += 1
    return n


def test_training_loaders_stop_after_max_iters_eval_loaders_do_not(monkeypatch):
    monkeypatch.setattr(prof.ProbedLoader, "max_iters", 2)
    train = prof.ProbedLoader(_Slow(10, 0), batch_size=2, shuffle=True)
    evals = prof.ProbedLoader(_Slow(10, 0), batch_size=2, shuffle=False)
    assert train.training and not evals.training
    assert len(train) == 2 and _consume(train) == 2
    assert len(evals) == 5 and _consume(evals) == 5
    st = evals.stats()
    assert st["batches"] == 5 and st["images"] == 8  # the first batch is the warm-up, not counted


def test_trace_covers_k_batches_of_the_first_loader_and_leaves_the_steady_state(monkeypatch):
    """--trace K: torch.profiler over batches 1..K of the step's first loader that gets there (one
    at a time: a second loader of the step is not traced); the ops run in those batches are in its
    summary, and the steady state counts the batches after them."""
    monkeypatch.setattr(prof.ProbedLoader, "registry", [])
    monkeypatch.setattr(prof.ProbedLoader, "trace_batches", 2)
    first = prof.ProbedLoader(_Slow(7, 0), batch_size=1)
    second = prof.ProbedLoader(_Slow(4, 0), batch_size=1)
    for k, _ in enumerate(first):
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))
        if k == 1:
            _consume(second)  # a nested loader while the first is traced
    t = first.trace
    assert t["batches"] == 2 and t["kernel_share"] is None and 0 < t["host_ops_share"] <= 1
    assert [r["op"] for r in t["host_top"] if r["op"] == "aten::mm"] and len(t["host_top"]) <= 8
    assert {r["op"]: r["calls"] for r in t["host_top"]}["aten::mm"] == 2  # batches 1 and 2 only
    assert second.trace is None and second.traced == 0
    st = first.stats()
    assert st["batches"] == 7 and st["images"] == 4  # batches 3..6: after the warm-up and the traced two
    short = prof.ProbedLoader(_Slow(4, 0), batch_size=1)
    monkeypatch.setattr(prof.ProbedLoader, "registry", [short])
    _consume(short)
    assert short.trace["batches"] == 2 and short.stats()["images"] == 3  # too few after: counted from 1
    assert "host in ops" in prof.trace_line(t)


def test_sync_sites_count_the_waits_by_the_line_that_made_them(monkeypatch, recwarn):
    """SyncSites turns torch.cuda's sync debug warnings in its window into call counts per
    file:line (CUDA stubbed: the warnings are raised by hand), passes the window's other warnings
    on, and does nothing without CUDA."""
    import warnings

    import profile_probes  # on the path since pipeline_profile's import

    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    sites = profile_probes.SyncSites()
    sites.start()
    for _ in range(3):
        warnings.warn("called a synchronizing CUDA operation")  # the same line three times
    warnings.warn("called a synchronizing CUDA operation")
    warnings.warn("something else", UserWarning)
    got = sites.stop()
    assert [(str(w.message), w.category) for w in recwarn] == [("something else", UserWarning)]
    line = test_sync_sites_count_the_waits_by_the_line_that_made_them.__code__.co_firstlineno
    assert modes == ["warn", "default"]
    assert [r["calls"] for r in got] == [3, 1] and got[0]["where"].startswith("test_profile.py:")
    assert int(got[0]["where"].split(":")[1]) > line
    with warnings.catch_warnings(record=True) as rest:  # the window is closed: the warning goes on
        warnings.simplefilter("always")
        warnings.warn("called a synchronizing CUDA operation")
    assert len(rest) == 1 and sites.stop() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = profile_probes.SyncSites()
    cpu.start()
    assert cpu.stop() is None and modes == ["warn", "default"]
    t = {"batches": 2, "seconds": 1.0, "kernel_share": 0.5, "host_ops_share": 0.2, "host_top": [],
         "syncs": got}
    assert "waits for the GPU: test_profile.py:" in prof.trace_line(t)
    assert "waits for the GPU: none" in prof.trace_line({**t, "syncs": []})


def test_data_wait_share_and_bound():
    slow_data = prof.ProbedLoader(_Slow(6, 0.03), batch_size=1)
    _consume(slow_data, work=0.0)
    slow_work = prof.ProbedLoader(_Slow(6, 0.0), batch_size=1)
    _consume(slow_work, work=0.03)
    a, b = slow_data.stats(), slow_work.stats()
    assert a["wait_s"] / a["seconds"] > 0.8 and b["wait_s"] / b["seconds"] < 0.2
    assert prof._bound(0.9, None, "cpu").startswith("data loading")
    assert prof._bound(0.05, None, "cpu").startswith("compute")
    assert prof._bound(0.05, 0.95, "cuda:0") == "GPU compute"
    assert prof._bound(0.05, 0.4, "cuda:0").startswith("host")


def _step(name: str, proj: float, busy: float | None = None, trace: dict | None = None) -> dict:
    return {"step": name, "projected_full_s": proj, "gpu_busy": busy, "bound": f"bound of {name}", "trace": trace}


def test_goals_add_the_map_steps_and_the_walk_choice_and_name_each_idle_step():
    trace = {"batches": 2, "seconds": 0.5, "kernel_share": 0.3, "host_ops_share": 0.6,
             "host_top": [{"op": "cudaStreamSynchronize", "self_ms": 120.0}], "syncs": [{"where": "make.py:9", "calls": 4}]}
    steps = [_step("train-cls", 1000.0, 0.95), _step("make-cam", 200.0, 0.5, trace), _step("make-ir-label", 150.0, 0.2),
             _step("train-irn", 300.0, 0.9), _step("make-sem-seg", 200.0, 0.71)]
    r = {"steps": steps, "walk_choice": {"projected_full_s": 40.0}, "projected_full_run_s": 7000.0}
    g = prof.goals(r)
    assert g["maps"]["projected_s"] == pytest.approx(590.0) and g["maps"]["met"] and not g["maps"]["missing"]
    assert g["full_run"]["met"]
    assert [b["step"] for b in g["gpu_busy"]["below"]] == ["make-cam", "make-ir-label"]
    assert g["gpu_busy"]["below"][0]["trace"] == prof.trace_line(trace) and g["gpu_busy"]["below"][1]["trace"] is None
    text = "\n".join(profile_report.goal_lines(g))
    assert "0:09:50 projected, goal 0:10:00: met" in text and "make-cam 50%: bound of make-cam; traced:" in text
    assert "make.py:9 x4" in text and "train-irn" not in text
    # past the goals, or a step missing: not met
    r2 = {**r, "walk_choice": {"projected_full_s": 60.0}, "projected_full_run_s": 7201.0}
    g2 = prof.goals(r2)
    assert not g2["maps"]["met"] and not g2["full_run"]["met"]
    g3 = prof.goals({**r, "steps": [s for s in steps if s["step"] != "make-ir-label"]})
    assert not g3["maps"]["met"] and g3["maps"]["missing"] == ["make-ir-label"]
    assert "NOT met (no figures for make-ir-label)" in "\n".join(profile_report.goal_lines(g3))
    # on the CPU there are no GPU samples
    cpu = prof.goals({**r, "steps": [{**s, "gpu_busy": None} for s in steps]})
    assert not cpu["gpu_busy"]["measured"] and "GPU busy: not measured" in "\n".join(
        profile_report.goal_lines(cpu))


def test_single_batch_loaders_count_without_their_start_up():
    """A small split's loader has only its warm-up batch: beside a loader with a steady state it
    is set-up; alone, its batch counts without the wait for the workers' start-up."""
    start_up = prof.ProbedLoader(_Slow(4, 0.05), batch_size=4)  # one batch, 0.2 s of waiting
    _consume(start_up, work=0.02)
    steady = prof.ProbedLoader(_Slow(12, 0.0), batch_size=4)
    _consume(steady, work=0.02)
    one, many = start_up.stats(), steady.stats()
    parts = prof._loader_parts([one, many, None])
    assert set(parts) == {"eval"} and "single_batch" not in parts["eval"]
    assert parts["eval"]["images"] == many["images"] == 8 and parts["eval"]["seconds"] == many["seconds"]
    alone = prof._loader_parts([one])["eval"]
    assert alone["single_batch"] and alone["images"] == 4 and alone["wait_s"] == 0.0
    assert 0.015 < alone["seconds"] < 0.15 < one["seconds"]  # the 0.02 s of work, not the 0.2 s wait


def test_gpu_busy_averages_the_samples_inside_the_windows():
    g = object.__new__(prof.GpuSampler)
    g.samples = [(0.5, 0.0), (1.5, 1.0), (2.5, 0.8), (3.5, 0.0), (4.5, 0.6)]
    assert g.busy([(1.0, 3.0)]) == pytest.approx(0.9)
    assert g.busy([(1.0, 2.0), (4.0, 5.0)]) == pytest.approx(0.8)
    assert g.busy([(10.0, 11.0)]) is None


def test_gpu_busy_from_nvml(monkeypatch):
    """With pynvml (nvidia-ml-py) a thread polls the utilization; the samples carry their time."""
    import sys
    import types

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
                                 nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    t0 = time.perf_counter()
    g = prof.GpuSampler(0, interval=0.01)
    time.sleep(0.2)
    g.close()
    n = len(g.samples)
    time.sleep(0.05)
    assert g.source == "nvml" and n >= 3 and len(g.samples) <= n + 1  # stopped by close()
    assert g.busy([(t0, time.perf_counter())]) == pytest.approx(0.4)


def test_full_run_counts_follow_the_paper():
    paper = {"cls.epochs": 10, "cls.batch_size": 16, "irn.epochs": 3, "irn.batch_size": 32,
             "seg.epochs": 10, "seg.batch_size": 48}
    full = prof.full_run_images(paper)
    assert set(full) == {s.name for s in PIPELINE}
    assert full["train-cls"]["train"] == 10 * (10675 // 16) * 16 and full["train-cls"]["eval"] == 10 * 686
    assert full["make-cam"]["eval"] == full["make-sem-seg"]["eval"] == 12047
    assert full["make-ir-label"]["step"] == full["make-ir-label"]["eval"] == 10675
    assert full["make-ir-label"]["val_choice"] == 686 and full["train-irn"]["dp_mean"] == 10675
    assert full["train-irn"]["train"] == 3 * (10675 // 32) * 32
    assert full["train-seg"]["train"] == 10 * (10675 // 48) * 48 and full["predict-seg"]["eval"] == 1372


@pytest.mark.parametrize("preset", sorted(prof.PRESETS))
def test_every_preset_times_the_papers_walk(tmp_path, preset):
    """The walk is IRNet's 256 steps whatever siim.yaml chooses on val (the reference walk is
    timed at that length too), and an override still wins."""
    import argparse

    args = argparse.Namespace(preset=preset, set=[], device="cpu", cache=True, workers=-1,
                              **{k: v for k, v in prof.PRESETS[preset].items() if k != "workers"})
    cfg = prof.profile_config(args, tmp_path, n_train=8)
    assert (cfg["sem_seg"]["steps"], cfg["sem_seg"]["bg_thres"], cfg["sem_seg"]["edge_mask"]) == (256, 0.25, True)
    args.set = ["sem_seg.steps=val"]
    spec = importlib.util.spec_from_file_location("pipeline_reference", ROOT / "benchmarks" / "pipeline_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    with pytest.raises(ValueError, match="sem_seg.steps must be a number, got 'val'"):
        ref.reference_timings(prof.profile_config(args, tmp_path, n_train=8), "cpu", 1, 8)


@pytest.mark.slow
def test_tiny_profile_runs_every_step(tmp_path):
    out = tmp_path / "prof"
    js = tmp_path / "prof.json"
    assert prof.main(["--preset", "tiny", "--out", str(out), "--json", str(js), "--reference",
                      "--ref-images", "1", "--ref-walk-size", "8", "--trace", "2"]) == 0
    r = json.loads(js.read_text())
    assert [s["step"] for s in r["steps"]] == [s.name for s in PIPELINE]
    assert r["positive_images"] == round(r["images"] * 2669 / 12047)  # SIIM's share (12 images: 3)
    traced = {s["step"]: s["trace"] for s in r["steps"] if s["trace"]}
    assert "make-sem-seg" in traced and traced["make-sem-seg"]["host_top"]  # its loader: one image a batch
    for s in r["steps"]:
        assert s["images_per_s"] > 0 and s["wall_s"] > 0 and s["projected_full_s"] >= s["setup_s"]
        assert s["data_wait"] is None or 0 <= s["data_wait"] <= 1
    by = {s["step"]: s for s in r["steps"]}
    # training was bounded to one batch (max_iters 1); the CAMs cover every image
    assert by["train-cls"]["parts"]["train"]["batches"] == 1
    assert by["train-seg"]["parts"]["train"]["batches"] == 1
    assert by["make-cam"]["parts"]["eval"]["batches"] >= 1 and by["train-irn"]["parts"]["dp_mean"]["images"] > 0
    # make-ir-label: its loader (the batched CRF) probed, its thresholds' choice on val timed apart
    irl = by["make-ir-label"]["parts"]
    assert irl["eval"]["images"] > 0 and irl["val_choice"]["images"] > 0 and irl["val_choice"]["seconds"] > 0
    labelled = len(list((out / "run" / "ir_label").glob("*.png")))  # the val choice's loaders are not its part
    assert irl["eval"]["images"] == labelled
    # evaluate: its per-image loop over the evaluated splits timed, the rest set-up (counted once)
    ev = by["evaluate"]
    report = json.loads((out / "run" / "report.json").read_text())
    n_eval = sum(steps["cam"]["n_images"] for steps in report["splits"].values())
    assert set(ev["parts"]) == {"eval"} and ev["parts"]["eval"]["images"] == n_eval
    assert ev["setup_s"] == pytest.approx(ev["wall_s"] - ev["parts"]["eval"]["seconds"])
    # the walk's choice on val (siim.yaml: steps / bg_thres val), timed apart and in the total
    w = r["walk_choice"]
    assert w["images"] > 0 and w["seconds"] > 0 and w["projected_full_s"] == pytest.approx(w["per_image_s"] * 686)
    assert abs(r["projected_full_run_s"] - sum(s["projected_full_s"] for s in r["steps"]) - w["projected_full_s"]) < 1e-6
    assert r["decode"]["images"] > 0 and r["decode"]["cache_hit_s"] > 0
    assert {"dense_walk", "pydensecrf_ir_label", "pytorch_grad_cam"} <= set(r["reference"])
    assert (out / "run" / "report.json").exists() and list((out / "run" / "cache").rglob("*.npz"))
    assert "| **total** |" in prof.format_table(r)
    maps = sum(s["projected_full_s"] for s in r["steps"] if s["step"] in profile_report.MAP_STEPS)
    assert r["goals"]["maps"]["projected_s"] == pytest.approx(maps + w["projected_full_s"])
    assert "goal: CAMs + IR labels + walk" in prof.format_table(r)
