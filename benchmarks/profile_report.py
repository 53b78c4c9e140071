"""The table of benchmarks/pipeline_profile.py, and its projection against the goals of one
H100/H200 for the full SIIM run (12,047 images; Viniavskyi et al., AIME 2020, with IRNet of Ahn
et al., CVPR 2019): the CAMs, IR labels and walk within 10 minutes, the whole run within 2 hours,
and every step at least 70 % GPU busy or its bound named."""

from __future__ import annotations

from profile_probes import trace_line

MAP_STEPS = ("make-cam", "make-ir-label", "make-sem-seg")  # with the walk chosen on val
MAPS_GOAL_S = 600.0
RUN_GOAL_S = 7200.0
BUSY_GOAL = 0.7


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def goals(r: dict) -> dict:
    """The profile's projection against the goals.

    Args:
        r: the profile's result (``steps`` with ``step``, ``projected_full_s``, ``gpu_busy``,
            ``bound``, ``trace``; ``walk_choice``; ``projected_full_run_s``).

    Returns:
        ``{"maps": {"projected_s", "goal_s", "met", "missing"}, "full_run": {"projected_s",
        "goal_s", "met"}, "gpu_busy": {"goal", "measured", "below": [{"step", "busy", "bound",
        "trace"}]}}``. ``maps`` is make-cam + make-ir-label + make-sem-seg + the walk's choice on
        val; a missing step leaves it unmet. ``gpu_busy.measured`` is False without GPU samples.
    """
    proj = {s["step"]: s["projected_full_s"] for s in r["steps"]}
    missing = [k for k in MAP_STEPS if k not in proj]
    maps = sum(proj.get(k, 0.0) for k in MAP_STEPS) + (r.get("walk_choice") or {}).get("projected_full_s", 0.0)
    run = r["projected_full_run_s"]
    busy = [s for s in r["steps"] if s.get("gpu_busy") is not None]
    below = [{"step": s["step"], "busy": s["gpu_busy"], "bound": s["bound"],
              "trace": trace_line(s["trace"]) if s.get("trace") else None}
             for s in busy if s["gpu_busy"] < BUSY_GOAL]
    return {"maps": {"projected_s": maps, "goal_s": MAPS_GOAL_S, "met": not missing and maps <= MAPS_GOAL_S,
                     "missing": missing},
            "full_run": {"projected_s": run, "goal_s": RUN_GOAL_S, "met": run <= RUN_GOAL_S},
            "gpu_busy": {"goal": BUSY_GOAL, "measured": bool(busy), "below": below}}


def goal_lines(g: dict) -> list[str]:
    """The goals as lines for the table's foot."""
    m, f, b = g["maps"], g["full_run"], g["gpu_busy"]
    lines = [f"goal: CAMs + IR labels + walk (make-cam, make-ir-label, make-sem-seg, the walk chosen on val) "
             f"{_hms(m['projected_s'])} projected, goal {_hms(m['goal_s'])}: {'met' if m['met'] else 'NOT met'}"
             + (f" (no figures for {', '.join(m['missing'])})" if m["missing"] else ""),
             f"goal: the whole run {_hms(f['projected_s'])} projected, goal {_hms(f['goal_s'])}: "
             f"{'met' if f['met'] else 'NOT met'}"]
    if not b["measured"]:
        lines.append(f"goal: every step >= {b['goal']:.0%} GPU busy: not measured (no GPU samples)")
    elif not b["below"]:
        lines.append(f"goal: every step >= {b['goal']:.0%} GPU busy: met")
    else:
        lines.append(f"goal: every step >= {b['goal']:.0%} GPU busy: {len(b['below'])} below, each with its bound:")
        lines += [f"  {s['step']} {s['busy']:.0%}: {s['bound']}" + (f"; traced: {s['trace']}" if s["trace"] else "")
                  for s in b["below"]]
    return lines


def format_table(r: dict) -> str:
    """Markdown table of the measured figures and the projection, with the goals below it."""
    lines = [f"machine: {r['machine']}", f"{r['images']} images, {r['dicom_size']} px DICOMs -> {r['image_size']} px, "
             f"max {r['max_iters']} iterations per training step, cache {'on' if r['cache'] else 'off'}", "",
             "| step | img/s | peak GPU MiB | GPU busy | CPU use | data wait | bound | measured s | projected SIIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in r["steps"]:
        gpu_mib = f"{s['peak_gpu_mib']:.0f}" if s.get("peak_gpu_mib") is not None else "—"
        busy = f"{s['gpu_busy']:.0%}" if s.get("gpu_busy") is not None else "—"
        wait = f"{s['data_wait']:.0%}" if s.get("data_wait") is not None else "—"
        lines.append(f"| {s['step']} | {s['images_per_s']:.2f} | {gpu_mib} | {busy} | {s['cpu_util']:.0%} | {wait} | "
                     f"{s['bound']} | {s['wall_s']:.1f} | {_hms(s['projected_full_s'])} |")
    w = r.get("walk_choice") or {}
    if w.get("seconds"):
        lines.append(f"| make-sem-seg: the walk chosen on val | {w['images'] / w['seconds']:.2f} | | | | | | "
                     f"{w['seconds']:.1f} | {_hms(w['projected_full_s'])} |")
    lines.append(f"| **total** | | | | | | | {sum(s['wall_s'] for s in r['steps']) + w.get('seconds', 0):.1f} | "
                 f"**{_hms(r['projected_full_run_s'])}** |")
    lines += [""] + goal_lines(r.get("goals") or goals(r))
    d = r["decode"]
    lines += ["", f"DICOM decode + resize {d['decode_resize_s'] * 1e3:.1f} ms/image, cache hit "
              f"{d['cache_hit_s'] * 1e3:.1f} ms/image ({d['speedup']:.1f}x, {d['cache_bytes_per_image'] / 1024:.0f} KiB)"]
    if "reference" in r:
        lines += ["", "| reference part | s per image | projected SIIM |", "|---|---|---|"]
        for k, v in r["reference"].items():
            if "per_image_s" in v:
                note = f" (timed at {v['map']}², scaled by (HW)³)" if v.get("extrapolated") else ""
                lines.append(f"| {k}{note} | {v['per_image_s']:.3f} | {_hms(v['projected_full_s'])} |")
    return "\n".join(lines)
