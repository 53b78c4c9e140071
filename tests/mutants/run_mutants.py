"""Run the hand-written mutants of ``tests/mutants/mutants.yaml`` against their killing tests.

Copies HEAD (``git archive``; ``--worktree``: the working tree's files) and the built
``wsss_fast/_C*.so`` into a temporary directory once, then for each mutant: applies its diff there,
runs its killing tests with ``PYTHONPATH`` on the copy, records ``killed`` (a test fails),
``survived`` (they pass), ``skipped`` (every test skipped here, e.g. CUDA-only) or ``error`` (the
diff does not apply, a test id is unknown or its module does not import alone), and restores the
files. The score is killed / (killed + survived). ``make mutants`` runs it; not part of ``make test``.

Usage:
    python tests/mutants/run_mutants.py [--baseline] [--build] [--worktree] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]


def run_tests(copy: Path, ids: list[str], timeout: float, stop_first: bool = True) -> tuple[str, dict[str, str]]:
    """Run pytest on ``ids`` in ``copy``.

    Args:
        copy: the tree to test (put first on ``PYTHONPATH``).
        ids: pytest node ids (a function id covers all its parametrizations).
        timeout: seconds before the whole process group is killed.
        stop_first: pass ``-x``.

    Returns:
        ``(status, outcomes)``: status is ``failed``, ``passed``, ``skipped`` (nothing passed or
        failed), ``timeout`` or ``error`` (pytest usage error / no tests); outcomes maps each run
        node id to ``passed``, ``failed`` or ``skipped``.
    """
    xml, log = copy / ".mutants-junit.xml", copy / ".mutants-pytest.log"
    xml.unlink(missing_ok=True)
    args = [sys.executable, *(PYTEST if stop_first else [a for a in PYTEST if a != "-x"]), f"--junitxml={xml}", *ids]
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun / DataLoader workers too
        proc.wait()
        return "timeout", {}
    outcomes: dict[str, str] = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            kids = {c.tag for c in case}
            outcomes[node] = ("failed" if kids & {"failure", "error"} else
                              "skipped" if "skipped" in kids else "passed")
    if rc in (1, 2):  # tests failed, or collection failed (e.g. the mutant does not import)
        return "failed", outcomes
    if rc != 0:
        print("\n" + "\n".join(log.read_text(errors="replace").splitlines()[-3:]), flush=True)
        return "error", outcomes
    return ("passed" if "passed" in outcomes.values() else "skipped"), outcomes


def make_copy(dest: Path, worktree: bool = False) -> None:
    """``git archive HEAD`` (or, with ``worktree``, the files git sees now) plus the built extension into ``dest``."""
    if worktree:
        names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               check=True, capture_output=True, text=True).stdout.split("\0")
        for name in filter(None, names):
            src = REPO / name
            if src.is_symlink() or src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name, follow_symlinks=False)  # a link stays a link (wsss_fast/configs)
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for so in (REPO / "wsss_fast").glob("_C*.so"):
        shutil.copy2(so, dest / "wsss_fast" / so.name)
    found = subprocess.run([sys.executable, "-c", "import wsss_fast; print(wsss_fast.__file__)"], cwd=dest,
                           env={**os.environ, "PYTHONPATH": str(dest)}, capture_output=True, text=True)
    if not found.stdout.strip().startswith(str(dest)):
        sys.exit(f"wsss_fast does not import from the copy {dest}: {found.stdout.strip() or found.stderr}")


def diff_files(diff: Path) -> list[str]:
    """Paths a unified diff changes (its ``+++ b/...`` lines)."""
    return [line[6:].strip() for line in diff.read_text().splitlines() if line.startswith("+++ b/")]


def run_mutant(copy: Path, m: dict, args: argparse.Namespace) -> tuple[str, float]:
    """Apply one mutant in ``copy``, run its tests, restore. Returns ``(result, seconds)``."""
    diff = HERE / m["diff"]
    saved = {f: (copy / f).read_bytes() for f in diff_files(diff) if (copy / f).exists()}
    sos = {p: p.read_bytes() for p in (copy / "wsss_fast").glob("_C*.so")} if m.get("needs_build") else {}
    t0 = time.perf_counter()
    try:
        if subprocess.run(["git", "apply", str(diff)], cwd=copy, capture_output=True).returncode:
            return "error", 0.0
        if m.get("needs_build"):
            build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=copy,
                                   env={**os.environ, "WITH_CUDA": "0"}, capture_output=True)
            if build.returncode:
                return "killed", time.perf_counter() - t0  # the mutant does not compile
        status, _ = run_tests(copy, m["tests"], args.timeout)
        result = {"failed": "killed", "passed": "survived", "timeout": "timeout"}.get(status, status)
        return result, time.perf_counter() - t0
    finally:
        for f, data in {**saved, **sos}.items():
            Path(copy / f).write_bytes(data)


def check_baseline(copy: Path, todo: list[dict], timeout: float, results: dict) -> None:
    """Run the mutants' tests on the unmutated copy; a mutant whose tests fail or all skip goes to ``results``."""
    status, outcomes = run_tests(copy, sorted({t for m in todo for t in m["tests"]}), timeout, stop_first=False)
    if status == "error" and len(todo) > 1:  # an unknown test id stops the whole run: check one by one
        for m in todo:
            check_baseline(copy, [m], timeout, results)
        return
    for m in todo:
        got = [o for n, o in outcomes.items() if any(n == t or n.startswith(t + "[") for t in m["tests"])]
        if "failed" in got or status in ("timeout", "error"):
            results[m["name"]] = (f"baseline {status}", 0.0)
        elif "passed" not in got:
            results[m["name"]] = ("skipped", 0.0)


def main() -> int:
    """Run the selected mutants and print the table; exit status 1 when one survived or errored."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=HERE / "mutants.yaml")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    p.add_argument("--build", action="store_true", help="also run needs_build (csrc) mutants; rebuilds, slow")
    p.add_argument("--baseline", action="store_true",
                   help="first run every killing test on the unmutated copy; a mutant whose tests fail or all "
                        "skip there is reported as such and not run")
    p.add_argument("--worktree", action="store_true", help="test the working tree's files instead of HEAD's")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per pytest run (a timeout counts as killed)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    mutants = yaml.safe_load(args.manifest.read_text())["mutants"]
    if args.only:
        unknown = set(args.only) - {m["name"] for m in mutants}
        if unknown:
            p.error(f"unknown mutants: {sorted(unknown)}")
        mutants = [m for m in mutants if m["name"] in args.only]
    results = {m["name"]: ("not run (needs --build)", 0.0) for m in mutants if m.get("needs_build") and not args.build}
    todo = [m for m in mutants if m["name"] not in results]

    with tempfile.TemporaryDirectory(prefix="wsss_mutants_") as tmp:
        copy = Path(tmp)
        make_copy(copy, args.worktree)
        if args.baseline and todo:
            print("baseline: the killing tests on the unmutated copy ...", flush=True)
            check_baseline(copy, todo, args.timeout * 2, results)
        for m in todo:
            if m["name"] in results:
                continue
            print(f"{m['name']} ...", end=" ", flush=True)
            results[m["name"]] = run_mutant(copy, m, args)
            print(f"{results[m['name']][0]} ({results[m['name']][1]:.0f}s)", flush=True)

    killed = sum(r in ("killed", "timeout") for r, _ in results.values())
    scored = killed + sum(r == "survived" for r, _ in results.values())
    width = max(len(m["name"]) for m in mutants)
    print(f"\n{'mutant':<{width}}  result                   seconds")
    for m in mutants:
        r, s = results[m["name"]]
        print(f"{m['name']:<{width}}  {r:<24} {s:7.0f}")
    print(f"\nscore: {killed}/{scored} killed" + (f" ({100 * killed / scored:.0f}%)" if scored else ""))
    if args.json:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit,
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "baseline": args.baseline,
            "tree": "worktree" if args.worktree else "HEAD",
            "killed": killed, "scored": scored,
            "mutants": [{"name": m["name"], "bug": m["bug"], "tests": m["tests"], "result": results[m["name"]][0],
                         "seconds": round(results[m["name"]][1], 1)} for m in mutants]}, indent=2) + "\n")
    fine = ("killed", "timeout", "skipped", "not run (needs --build)")
    return 0 if all(r in fine for r, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
