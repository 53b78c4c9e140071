"""``wsss-fast run``: order, skipping finished steps, resuming an interrupted step, --from."""

from __future__ import annotations

import json

import pytest

from wsss_fast.cli import main as cli
from wsss_fast.cli.pipeline import run_pipeline
from wsss_fast.config import load_config
from wsss_fast.engine.paths import RunPaths
from wsss_fast.steps import STEPS, get_step

PIPELINE = [s.name for s in STEPS if s.in_run]


def step_dir(paths: RunPaths, name: str):
    return get_step(name).folder(paths)


class Interrupted(Exception):
    pass


def _stub_steps(calls: list, fail_once: set | None = None, found_partial: dict | None = None):
    """Cheap stand-ins: each writes a file in its folder; a step in ``fail_once`` dies mid-way
    the first time (after writing a partial file), like a killed process. ``found_partial``
    records, per step, whether its folder held a partial file when the step started."""
    fail_once = set(fail_once or ())

    def make(name):
        def step(cfg, paths):
            calls.append(name)
            d = step_dir(paths, name)
            if found_partial is not None:
                found_partial.setdefault(name, []).append((d / "partial").exists())
            d.mkdir(parents=True, exist_ok=True)
            (d / "partial").write_text("x")
            if name in fail_once:
                fail_once.discard(name)
                raise Interrupted(name)
            (d / "out.txt").write_text(name)
            if name == "evaluate":
                paths.report.write_text(json.dumps({"splits": {}, "timings_s": {}}))
            paths.mark_done(d)
        return step

    return {name: make(name) for name in PIPELINE}


def test_step_table():
    """One table: the run order, output folders, and a parser for every step (and only those)."""
    from wsss_fast import steps

    assert [s.name for s in steps.PIPELINE] == PIPELINE
    assert PIPELINE == ["train-cls", "make-cam", "make-ir-label", "train-irn", "make-sem-seg", "train-seg",
                        "predict-seg", "evaluate"]
    assert all(s.output for s in steps.PIPELINE) and len({s.output for s in steps.PIPELINE}) == len(PIPELINE)
    assert all(callable(s.resolve()) for s in STEPS)
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert commands == {s.name for s in STEPS} | {"run", "demo", "info"}
    with pytest.raises(KeyError, match="unknown step 'train-cl'"):
        get_step("train-cl")


def test_run_resumes_after_interruption(tmp_path):
    cfg = load_config(None)
    paths = RunPaths(tmp_path / "run")
    calls: list = []
    found_partial: dict = {}
    steps = _stub_steps(calls, fail_once={"train-irn"}, found_partial=found_partial)
    with pytest.raises(Interrupted):
        run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    done_before = PIPELINE[:PIPELINE.index("train-irn")]
    assert calls == done_before + ["train-irn"]
    assert not paths.is_done(paths.irn) and (paths.irn / "partial").exists()
    assert paths.config.exists()
    timings = json.loads((paths.root / "timings.json").read_text())
    assert set(timings) == set(done_before) | {"total"}

    calls.clear()
    run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    # finished steps are skipped; the interrupted one reruns (its partial outputs kept for resume)
    assert calls == PIPELINE[PIPELINE.index("train-irn"):]
    assert found_partial["train-irn"] == [False, True]  # the rerun found what the killed run wrote
    assert all(paths.is_done(step_dir(paths, s)) for s in PIPELINE)
    timings = json.loads((paths.root / "timings.json").read_text())
    assert set(timings) == set(PIPELINE) | {"total"}
    assert json.loads(paths.report.read_text())["timings_s"] == timings

    calls.clear()
    run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    assert calls == []  # all done: nothing runs


def test_from_step_reruns_and_clears_later_outputs(tmp_path):
    cfg = load_config(None)
    paths = RunPaths(tmp_path / "run")
    calls: list = []
    steps = _stub_steps(calls)
    run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    (paths.seg / "stale.pt").write_text("old")
    paths.rw.mkdir(parents=True, exist_ok=True)
    (paths.rw / "stale.npy").write_text("old")  # make-sem-seg's walk outputs, beside sem_seg/
    calls.clear()
    run_pipeline(cfg, paths, start="make-sem-seg", steps=steps, log=lambda s: None)
    assert calls == PIPELINE[PIPELINE.index("make-sem-seg"):]
    assert not (paths.seg / "stale.pt").exists() and not (paths.rw / "stale.npy").exists()
    assert (paths.cls / "out.txt").exists()  # earlier steps untouched
    with pytest.raises(ValueError, match="--from"):
        run_pipeline(cfg, paths, start="nope", steps=steps, log=lambda s: None)


def test_rerunning_an_earlier_step_clears_stale_later_outputs(tmp_path):
    cfg = load_config(None)
    paths = RunPaths(tmp_path / "run")
    calls: list = []
    steps = _stub_steps(calls)
    run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    (paths.cam / ".done").unlink()  # the user asks for new CAMs
    calls.clear()
    run_pipeline(cfg, paths, steps=steps, log=lambda s: None)
    assert calls == PIPELINE[PIPELINE.index("make-cam"):]


def test_a_changed_configuration_is_saved_and_noted(tmp_path, monkeypatch, capsys):
    """A step or a run with other settings than the run folder's saves its own and says so;
    the same settings again say nothing."""
    out = tmp_path / "run"
    ran = []
    monkeypatch.setattr("wsss_fast.steps.Step.resolve", lambda self: lambda cfg, paths: ran.append(cfg))
    note = "differs from the one saved in"
    for overrides, noted in ((["ir_label.workers=0"], False), (["ir_label.workers=0"], False),
                             (["ir_label.workers=1"], True)):
        assert cli.main(["make-ir-label", "--config", "demo", "--out", str(out), *overrides]) == 0
        assert (note in capsys.readouterr().err) is noted
        assert load_config(out / "config.yaml")["ir_label"]["workers"] == ran[-1]["ir_label"]["workers"]
    assert [c["ir_label"]["workers"] for c in ran] == [0, 0, 1]

    logs: list = []
    steps = _stub_steps([])
    cfg = load_config(out / "config.yaml")
    run_pipeline(cfg, RunPaths(out), steps=steps, log=logs.append)
    assert not any(note in line for line in logs)
    cfg["ir_label"]["workers"] = 2
    run_pipeline(cfg, RunPaths(out), steps=steps, log=logs.append)
    assert sum(note in line for line in logs) == 1
    assert load_config(out / "config.yaml")["ir_label"]["workers"] == 2


def test_cli_parses_run_and_demo(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, paths, start=None, steps=None, log=print):
        seen.update(cfg=cfg, paths=paths, start=start)
        return {"total": 0}

    monkeypatch.setattr("wsss_fast.cli.pipeline.run_pipeline", fake_run)
    assert cli.main(["run", "--config", "demo", "--out", str(tmp_path / "r"), "--from", "train-seg",
                     "seg.epochs=1"]) == 0
    assert seen["start"] == "train-seg" and seen["cfg"]["seg"]["epochs"] == 1
    monkeypatch.setattr("wsss_fast.cli.pipeline.prepare_demo_data", lambda cfg, out: cfg)
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--device", "cpu", "cls.epochs=1"]) == 0
    assert seen["cfg"]["device"] == "cpu" and seen["cfg"]["cls"]["epochs"] == 1
    assert seen["cfg"]["dataset"]["image_size"] <= 256  # the small demo config
    assert cli.main(["demo", "--dataset", "voc", "--out", str(tmp_path / "v")]) == 0
    assert seen["cfg"]["dataset"]["name"] == "synthetic_voc"  # configs/demo_voc.yaml
    sweeps = []
    monkeypatch.setattr("wsss_fast.cli.pipeline.run_seeds",
                        lambda cfg, out, seeds, vary, start=None: sweeps.append((cfg["dataset"]["name"], seeds, vary)))
    assert cli.main(["demo", "--dataset", "voc", "--seeds", "3", "--vary", "data", "--out", str(tmp_path / "s"),
                     "seed=4"]) == 0
    assert sweeps == [("synthetic_voc", [4, 5, 6], "data")]


# the config section each step is configured by (its --help must list that section's keys)
OWN_SECTION = {"train-cls": "cls.epochs", "make-cam": "cam.scales", "eval-cam": "cam.eval_thresholds",
               "make-ir-label": "ir_label.", "train-irn": "irn.", "make-sem-seg": "sem_seg.",
               "eval-sem-seg": "sem_seg.", "show": "show.", "train-seg": "seg.", "predict-seg": "seg.",
               "evaluate": "evaluate."}


@pytest.mark.parametrize("command", sorted(s.name for s in STEPS))
def test_every_step_help_lists_its_config_keys(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "config keys" in text and "\n  " + OWN_SECTION[command] in text


def test_demo_data_follows_the_synthetic_section(tmp_path):
    """prepare_demo_data writes the set dataset.synthetic describes, its seed included (the
    same set build_dataset would write), and points dataset.root at it."""
    from wsss_fast.cli.pipeline import prepare_demo_data
    from wsss_fast.data import write_synthetic_siim

    cfg = load_config("demo", {"seed": 0, "dataset": {"synthetic": {"num_images": 6, "image_size": 32, "seed": 7}}})
    out = prepare_demo_data(cfg, tmp_path / "run")
    assert out["dataset"]["root"] == str(tmp_path / "run" / "data")
    write_synthetic_siim(tmp_path / "ref7", num_images=6, image_size=32, seed=7, positive_fraction=0.5)
    write_synthetic_siim(tmp_path / "ref0", num_images=6, image_size=32, seed=0, positive_fraction=0.5)
    csv = (tmp_path / "run" / "data" / "train-rle.csv").read_text()
    assert csv == (tmp_path / "ref7" / "train-rle.csv").read_text() != (tmp_path / "ref0" / "train-rle.csv").read_text()


def test_demo_seeds_vary_training_or_data(tmp_path, monkeypatch):
    """--seeds N: one run per seed under OUT/seed_<k>; vary=train keeps the data and splits
    of the config's seed, vary=data draws them from each seed; the summary covers every run."""
    import wsss_fast.cli.pipeline as pipeline

    seen = []

    def fake_run(cfg, paths, start=None, log=print):
        seen.append((paths.root.name, cfg["seed"], cfg["dataset"]["synthetic"]["seed"], cfg["dataset"]["split_seed"],
                     cfg["dataset"]["root"]))
        v = 0.1 * cfg["seed"] + 0.01 * cfg["dataset"]["synthetic"]["seed"]
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.report.write_text(json.dumps({"splits": {"test": {
            "cam": {"miou_all": v, "miou_pos": v, "dice": v}, "irnet": {"miou_all": v + 0.1, "miou_pos": v, "dice": v}}}}))
        return {}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    monkeypatch.setattr(pipeline, "prepare_demo_data",
                        lambda cfg, out: {**cfg, "dataset": {**cfg["dataset"], "root": str(out / "data")}})
    cfg = load_config("demo", {"seed": 3})
    s = pipeline.run_seeds(cfg, tmp_path, [3, 4], "train", log=lambda m: None)
    assert seen == [("seed_3", 3, 3, 3, str(tmp_path / "data")), ("seed_4", 4, 3, 3, str(tmp_path / "data"))]
    assert s["runs"] == ["train seed 3", "train seed 4"]
    assert s["splits"]["test"]["cam"]["miou_all"]["values"] == pytest.approx([0.33, 0.43])
    assert s["gains"]["test"]["irnet-cam"]["miou_all"]["positive"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [3, 4]
    assert "IRNet − CAM" in (tmp_path / "summary.md").read_text()
    seen.clear()
    pipeline.run_seeds(cfg, tmp_path / "d", [5, 6], "data", log=lambda m: None)
    assert seen == [("seed_5", 3, 5, 5, str(tmp_path / "d" / "seed_5" / "data")),
                    ("seed_6", 3, 6, 6, str(tmp_path / "d" / "seed_6" / "data"))]
