"""``wsss-fast run`` (every step in order) and ``wsss-fast demo`` (synthetic data, small models;
``--seeds N``: N runs, their mean, spread and paired gains).

The pipeline of Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for
Disease Localization in Chest X-Ray Images", AIME 2020: classifier + Grad-CAM++ ->
IRNet pseudo labels -> segmentation network -> evaluation (Table 3, Figure 1).

``run`` executes :data:`wsss_fast.steps.PIPELINE`. A step whose ``<step dir>/.done``
marker exists is skipped, so an interrupted run continues where it stopped (the steps
themselves resume from their checkpoints). When a step runs, the outputs of every later
step are stale and are removed. ``--from STEP`` removes the outputs of STEP and of every
later step and reruns them. Per-step wall times go to ``OUT/timings.json`` and into
``report.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from ..config import get, load_config
from ..engine.files import atomic_write_bytes, save_config
from ..engine.paths import RunPaths
from ..steps import PIPELINE, Step, get_step


def clear_outputs(paths: RunPaths, steps: list[Step], log: Callable[[str], None] = print) -> None:
    """Remove the outputs (and so the ``.done`` markers) of ``steps``."""
    for step in steps:
        targets = step.outputs(paths)
        if step.name == "evaluate":  # figures/ may hold other panels (wsss-fast show): keep them
            targets = [step.folder(paths) / ".done", paths.report]
        for t in targets:
            if t.is_dir():
                log(f"[run] removing stale outputs of {step.name}: {t}")
                shutil.rmtree(t)
            elif t.exists():
                log(f"[run] removing stale outputs of {step.name}: {t}")
                t.unlink()


def _write_timings(paths: RunPaths, timings: dict) -> None:
    timings = {k: v for k, v in timings.items() if k != "total"}
    timings["total"] = round(sum(v for v in timings.values() if isinstance(v, (int, float))), 2)
    atomic_write_bytes((json.dumps(timings, indent=2) + "\n").encode(), paths.root / "timings.json")
    return timings


def run_pipeline(cfg: dict, paths: RunPaths, start: str | None = None,
                 steps: dict[str, Callable] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Run every pipeline step in order, skipping finished ones.

    Args:
        cfg: the resolved configuration (saved to ``paths.config``).
        paths: the run directory.
        start: ``--from``: rerun from this step (its outputs and later ones are removed).
        steps: step name -> callable ``(cfg, paths)``; default: the step functions of
            :data:`wsss_fast.steps.PIPELINE` (tests pass cheap stand-ins).
        log: where progress lines go.

    Returns:
        The per-step wall times in seconds (``timings.json``), with ``total``.
    """
    order = list(PIPELINE)
    names = [s.name for s in order]
    if start is not None:
        if start not in names:
            raise ValueError(f"--from must be one of {names}, got '{start}'")
        clear_outputs(paths, order[names.index(start):], log)
    paths.root.mkdir(parents=True, exist_ok=True)
    if save_config(cfg, paths.config):
        log(f"[run] note: the configuration differs from the one saved in {paths.config}; "
            "finished steps are kept (use --from STEP to redo them)")
    from ..report import read_timings

    timings = read_timings(paths)
    for k, step in enumerate(order):
        if paths.is_done(step.folder(paths)):
            log(f"[run] {step.name}: done, skipped")
            continue
        clear_outputs(paths, [s for s in order[k + 1:] if any(p.exists() for p in s.outputs(paths))], log)
        log(f"[run] {step.name} ...")
        fn = steps[step.name] if steps is not None else step.resolve()
        t0 = time.perf_counter()
        fn(cfg, paths)
        timings[step.name] = round(time.perf_counter() - t0, 2)
        timings = _write_timings(paths, timings)
        if not paths.is_done(step.folder(paths)):
            paths.mark_done(step.folder(paths))
        log(f"[run] {step.name}: {timings[step.name]:.1f}s")
    timings = _write_timings(paths, timings)
    if paths.report.exists():  # the report was written before evaluate's own time was known
        try:
            report = json.loads(paths.report.read_text())
            report["timings_s"] = timings
            atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), paths.report)
        except json.JSONDecodeError:
            pass
    return timings


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, RunPaths(args.out), start=args.from_step)
    return 0


def prepare_demo_data(cfg: dict, out: Path) -> dict:
    """Write the built-in synthetic chest radiographs under ``out/data`` (once); point the config at them."""
    from ..data import write_synthetic_from_config

    root = write_synthetic_from_config(cfg, get(cfg, "dataset.root") or out / "data")
    cfg = dict(cfg)
    cfg["dataset"] = {**cfg["dataset"], "root": str(root)}
    return cfg


DEMO_CONFIGS = {"siim": "demo", "voc": "demo_voc"}


def seed_overrides(cfg: dict, seed: int, vary: str) -> dict:
    """The config of one run of a multi-seed demo.

    ``vary="train"``: the training seed is ``seed``; the data (synthetic set and splits) keep
    the config's seed, so every run sees the same images. ``vary="data"``: the synthetic set
    and its splits are drawn from ``seed``; training keeps the config's seed.
    """
    base = int(get(cfg, "seed"))
    data_seed = get(cfg, "dataset.synthetic.seed")
    data_seed = base if data_seed is None else int(data_seed)
    split_seed = get(cfg, "dataset.split_seed")
    split_seed = base if split_seed is None else int(split_seed)
    if vary == "train":
        train, data, split = seed, data_seed, split_seed
    elif vary == "data":
        train, data, split = base, seed, seed
    else:
        raise ValueError(f"vary must be 'train' or 'data', got {vary!r}")
    ds = {**cfg["dataset"], "split_seed": split, "synthetic": {**cfg["dataset"]["synthetic"], "seed": data}}
    return {**cfg, "seed": train, "dataset": ds}


def run_seeds(cfg: dict, out: Path, seeds: list[int], vary: str = "train", start: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """The demo pipeline once per seed, under ``out/seed_<k>``, and the summary over them.

    Writes ``out/summary.json`` (:func:`wsss_fast.report.summarize_runs`) and ``out/summary.md``
    (its tables). Finished runs are skipped, so an interrupted sweep resumes.

    Args:
        cfg: the demo configuration (``dataset.root`` unset: each run's data is written once,
            shared by the runs when only the training seed varies).
        out: the sweep's folder.
        seeds: the seeds.
        vary: ``"train"`` (training seeds, one data set) or ``"data"`` (data seeds).
        start: ``--from`` for every run.
        log: where progress lines go.

    Returns:
        The summary dict.
    """
    from ..report import format_summary, summarize_runs

    reports = {}
    for k in seeds:
        run_cfg = seed_overrides(cfg, k, vary)
        root = out / "data" if vary == "train" else out / f"seed_{k}" / "data"
        if get(cfg, "dataset.root") is None:
            run_cfg = prepare_demo_data(run_cfg, root.parent)
        paths = RunPaths(out / f"seed_{k}")
        log(f"[seeds] {vary} seed {k}: {paths.root}")
        t0 = time.perf_counter()
        run_pipeline(run_cfg, paths, start=start, log=log)
        log(f"[seeds] {vary} seed {k} done in {time.perf_counter() - t0:.0f}s")
        reports[f"{vary} seed {k}"] = json.loads(paths.report.read_text())
    summary = {**summarize_runs(reports), "vary": vary, "seeds": list(seeds)}
    atomic_write_bytes((json.dumps(summary, indent=2) + "\n").encode(), out / "summary.json")
    text = format_summary(summary)
    atomic_write_bytes((text + "\n").encode(), out / "summary.md")
    log(text)
    return summary


def _cmd_demo(args: argparse.Namespace) -> int:
    overrides = list(args.overrides or [])
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config or DEMO_CONFIGS[args.dataset], overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.seeds:
        first = int(get(cfg, "seed"))
        run_seeds(cfg, out, list(range(first, first + args.seeds)), args.vary, start=args.from_step)
        print(f"\n{args.seeds} runs finished in {time.perf_counter() - t0:.0f}s; summary in "
              f"{out / 'summary.md'}")
        return 0
    cfg = prepare_demo_data(cfg, out)
    data_s = time.perf_counter() - t0
    paths = RunPaths(out)
    # The evaluate step prints the report when it runs; print it here only when it was
    # skipped (finished in an earlier run), so a fresh demo shows the table once.
    evaluated_before = args.from_step is None and paths.is_done(get_step("evaluate").folder(paths))
    timings = run_pipeline(cfg, paths, start=args.from_step)
    if evaluated_before and paths.report.exists():
        from ..report import format_table

        report = json.loads(paths.report.read_text())
        print()
        print(format_table(report))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s (synthetic data {data_s:.0f}s, "
          f"pipeline steps {timings.get('total', 0):.0f}s in total over all runs); "
          f"outputs in {out}, report in {paths.report}, figures in {paths.figures}")
    return 0


def add_parsers(sub, add_common) -> None:
    """Register ``run`` and ``demo`` on the sub-command parser."""
    steps = [s.name for s in PIPELINE]
    p = sub.add_parser("run", help="run every step in order (finished steps are skipped)",
                       description="Run " + " -> ".join(steps) + "; steps whose .done marker exists "
                       "are skipped; --from STEP reruns from STEP.")
    add_common(p)
    p.add_argument("--from", dest="from_step", choices=steps, default=None,
                   help="rerun from this step (its outputs and those of later steps are removed)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="synthetic chest radiographs + the whole pipeline with small models",
                       description="Write the built-in synthetic chest radiographs under OUT/data and "
                       "run the whole pipeline with configs/demo.yaml; prints the report.")
    add_common(p, config_required=False)
    p.set_defaults(config=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's)")
    p.add_argument("--from", dest="from_step", choices=steps, default=None,
                   help="rerun from this step")
    p.add_argument("--dataset", choices=sorted(DEMO_CONFIGS), default="siim",
                   help="siim: synthetic chest radiographs (configs/demo.yaml); voc: synthetic multi-class "
                        "scenes in the PASCAL VOC layout (configs/demo_voc.yaml)")
    p.add_argument("--seeds", type=int, default=0, metavar="N",
                   help="run the pipeline N times (seeds seed .. seed+N-1, under OUT/seed_<k>) and write "
                        "OUT/summary.md: mean +- std per step and the paired gains")
    p.add_argument("--vary", choices=("train", "data"), default="train",
                   help="with --seeds: vary the training seed (one data set) or the data seed")
    p.set_defaults(func=_cmd_demo)
