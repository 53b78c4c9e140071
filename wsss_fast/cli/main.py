"""``wsss-fast``: one command per pipeline step, plus ``run`` (all steps) and ``demo``.

The commands are the steps of :data:`wsss_fast.steps.STEPS`; this file builds their parsers
(with the config keys each one reads) and parses the shared options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..engine.files import save_config
from ..engine.paths import RunPaths
from ..steps import STEPS, get_step


def config_help(sections: tuple[str, ...]) -> str | None:
    """The ``default.yaml`` lines of ``sections`` as ``key.sub: default  # comment`` ("" = top-level keys)."""
    if not sections:
        return None
    from ..config import CONFIG_DIR

    lines, stack, current = [], [], None
    for raw in (CONFIG_DIR / "default.yaml").read_text().splitlines():
        text = raw.split("#", 1)[0].rstrip()
        comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
        if not text.strip():
            if comment and current in sections and lines and raw.startswith(" "):
                lines.append(" " * 40 + "# " + comment)  # continuation of the previous comment
            continue
        indent = len(text) - len(text.lstrip())
        key, _, value = text.strip().partition(":")
        depth = indent // 2
        stack = stack[:depth] + [key]
        if depth == 0:
            current = key if not value.strip() else ""
        if current not in sections or (depth == 0 and current):
            continue
        if value.strip() or comment:
            entry = f"  {'.'.join(stack)}: {value.strip()}" if value.strip() else f"  {'.'.join(stack)}:"
            lines.append((f"{entry:<40}" + (f"# {comment}" if comment else "")).rstrip())
    return "config keys (override any with key.sub=value; defaults from configs/default.yaml):\n" + "\n".join(lines)


def _add_common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required,
                   help="YAML config file, or the name of a shipped one (siim, voc, demo)")
    p.add_argument("--out", required=True, type=Path, help="run directory: every output goes here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override any config key, e.g. cls.epochs=3 cam.scales=[1.0,0.5]")


def prepare(args: argparse.Namespace) -> tuple[dict, RunPaths]:
    """Load the config (with overrides), create the run folder and save the resolved config
    (saying so on stderr when it replaces a different one)."""
    cfg = load_config(args.config, args.overrides)
    paths = RunPaths(args.out)
    paths.root.mkdir(parents=True, exist_ok=True)
    if save_config(cfg, paths.config):
        print(f"[{args.command}] note: the configuration differs from the one saved in {paths.config}, "
              "which now holds this command's", file=sys.stderr)
    return cfg, paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss-fast",
        description="Weakly-supervised segmentation: classifier + Grad-CAM++ -> IRNet -> segmentation "
                    "(Viniavskyi et al., AIME 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for step in STEPS:
        desc = step.help + (("\n\n" + step.details) if step.details else "")
        _add_common(sub.add_parser(step.name, help=step.help, description=desc,
                                   epilog=config_help(step.sections),
                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    from . import pipeline

    pipeline.add_parsers(sub, _add_common)
    p = sub.add_parser("info", help="print how the extension was built and loaded")
    p.set_defaults(func=_info)
    return parser


def _info(args: argparse.Namespace) -> int:
    import json

    from .. import extension_info

    print(json.dumps(extension_info(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "func", None) is not None:
            return int(args.func(args) or 0)
        cfg, paths = prepare(args)
    except ConfigError as err:  # a typo in a key: say which, before any work starts
        parser.error(str(err))
    get_step(args.command).resolve()(cfg, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
