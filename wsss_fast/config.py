"""YAML run configuration: defaults, config files and command-line overrides.

A configuration is a nested dict. ``configs/default.yaml`` holds every key with its
default and a comment; ``configs/{siim,voc,demo}.yaml`` override some of them, and
``key.sub=value`` strings from the command line override those (values are parsed as
YAML, so ``cls.epochs=3``, ``cam.scales=[1.0,0.5]`` and ``seg.amp=false`` work).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def find_config(name_or_path: str | Path) -> Path:
    """Resolve a config given as a path or as the name of a shipped config (``siim``, ``demo``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"config file not found: '{name_or_path}' (looked for it as a path and in {CONFIG_DIR})"
    )


def parse_overrides(items: Iterable[str]) -> dict:
    """Turn ``["a.b=1", "c=[1,2]"]`` into ``{"a": {"b": 1}, "c": [1, 2]}``."""
    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict | None = None) -> dict:
    """Load ``default.yaml``, then the given file, then the overrides.

    Args:
        path: a YAML file, or the name of a shipped config; None for the defaults alone.
        overrides: ``key.sub=value`` strings or a nested dict.

    Returns:
        The merged configuration. Unknown top-level sections in the file are an error,
        so that a typo does not silently fall back to a default.
    """
    cfg = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()) or {}
    if path is not None:
        user = yaml.safe_load(find_config(path).read_text()) or {}
        unknown = sorted(set(user) - set(cfg))
        if unknown:
            raise KeyError(f"{path}: unknown config sections {unknown}; known: {sorted(cfg)}")
        cfg = _merge(cfg, user)
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        cfg = _merge(cfg, ov)
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    """Write the resolved configuration beside a run's outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


def get(cfg: dict, dotted: str, default: Any = None) -> Any:
    """``get(cfg, "cls.epochs")``: a nested lookup with a default."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
