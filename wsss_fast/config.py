"""YAML run configuration: defaults, config files and command-line overrides.

A configuration is a nested dict. ``configs/default.yaml`` holds every key with its
default and a comment; ``configs/{siim,voc,demo}.yaml`` override some of them, and
``key.sub=value`` strings from the command line override those (values are parsed as
YAML, so ``cls.epochs=3``, ``cam.scales=[1.0,0.5]`` and ``seg.amp=false`` work).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(KeyError):
    """An unknown or malformed configuration key (a ``KeyError`` with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _dotted_keys(node: dict, prefix: str = "") -> list[str]:
    """Every key of a nested dict as a dotted path (sections included)."""
    out = []
    for key, value in node.items():
        out.append(prefix + str(key))
        if isinstance(value, dict):
            out += _dotted_keys(value, f"{prefix}{key}.")
    return out


def _suggest(dotted: str, known: list[str]) -> str:
    """`` (did you mean 'cls.epochs'?)`` for the closest known key, or ''."""
    leaf = dotted.rsplit(".", 1)[-1]
    by_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    match = by_leaf[:1] if len(by_leaf) == 1 else difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_keys(defaults: dict, override: dict, source: str, prefix: str = "",
               known: list[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first key of ``override`` that ``defaults`` lacks.

    Args:
        defaults: the nested defaults (``default.yaml``); a dict there is a section whose keys
            are fixed, any other value may be replaced by anything.
        override: the nested values to check (a file's content or parsed overrides).
        source: where ``override`` came from, named in the error (a file, or "override").
        prefix: dotted path of ``defaults`` inside the whole configuration.
        known: every dotted key of the whole configuration (for the suggestion).
    """
    if known is None:
        known = _dotted_keys(defaults)
    if not isinstance(override, dict):
        raise ConfigError(f"{source}: the configuration{' section ' + prefix.rstrip('.') if prefix else ''} "
                          f"must be a mapping, got {type(override).__name__}")
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            while isinstance(value, dict) and len(value) == 1:  # clss: {lr: 1} -> clss.lr
                (sub, value), = value.items()
                dotted = f"{dotted}.{sub}"
            raise ConfigError(f"{source}: unknown config key '{dotted}'{_suggest(dotted, known)}")
        if isinstance(defaults[key], dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section (keys "
                                  f"{sorted(defaults[key])}), got {value!r}")
            check_keys(defaults[key], value, source, dotted + ".", known)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None and isinstance(out.get(key), dict):
            continue  # an empty section in a file ("ir_label:") keeps the defaults
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


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error (YAML keeps
    the last one and silently drops the other)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"config key '{key}' appears twice in one mapping{key_node.start_mark}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> dict:
    """A YAML config file as a dict (empty file: {}); a key repeated in a mapping raises ConfigError."""
    return yaml.load(Path(path).read_text(), Loader=_StrictLoader) or {}


def load_defaults() -> dict:
    """``configs/default.yaml``: every key the pipeline reads, with its one default."""
    return read_yaml(CONFIG_DIR / "default.yaml")


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict | None = None) -> dict:
    """Load ``default.yaml``, then the given file, then the overrides.

    Args:
        path: a YAML file, or the name of a shipped config; None for the defaults alone.
        overrides: ``key.sub=value`` strings or a nested dict.

    Returns:
        The merged configuration.

    Raises:
        ConfigError: a key of the file or of an override, at any depth, that ``default.yaml``
            does not have; the message names the key, where it came from and the closest
            known key.
    """
    cfg = load_defaults()
    known = _dotted_keys(cfg)
    if path is not None:
        file = find_config(path)
        user = read_yaml(file)
        check_keys(cfg, user, str(file), known=known)
        cfg = _merge(cfg, user)
    if overrides:
        if isinstance(overrides, dict):
            check_keys(cfg, overrides, "override", known=known)
            cfg = _merge(cfg, overrides)
        else:
            for item in overrides:
                ov = parse_overrides([item])
                check_keys(cfg, ov, f"override '{item}'", known=known)
                cfg = _merge(cfg, ov)
    return cfg


def get(cfg: dict, dotted: str) -> Any:
    """``get(cfg, "cls.epochs")``: a nested lookup. There is no second default: a configuration
    from :func:`load_config` holds every key of ``default.yaml``.

    Raises:
        KeyError: the key is missing (a configuration not made by :func:`load_config`).
    """
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config key '{dotted}' is missing; build configurations with "
                           "wsss_fast.config.load_config, which fills in configs/default.yaml")
        node = node[part]
    return node
