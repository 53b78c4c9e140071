"""The package's shape: no module imports from a layer above its own.

Layers, bottom to top: the library (config, ops, reference, nn, engine, data, metrics), then
the pipeline's steps in order (cls -> cam -> irn -> seg), then report, the step table and the
command line. A step may use the library and the steps before it, never a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "wsss_fast"
LAYER = {"_ext": 0, "config": 0, "ops": 1, "reference": 0, "nn": 2, "engine": 1, "data": 2, "metrics": 2,
         "cls": 3, "cam": 4, "irn": 5, "seg": 6, "report": 7, "steps": 8, "cli": 9, "__init__": 0}


def _top(module: str) -> str:
    """``wsss_fast.irn.train`` -> ``irn``; a name defined in ``wsss_fast/__init__.py`` -> ``__init__``."""
    part = module.split(".")[1] if module.count(".") else "__init__"
    return part if (PKG / part).is_dir() or (PKG / f"{part}.py").exists() else "__init__"


def _imports(path: Path) -> list[str]:
    module = "wsss_fast." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if not node.module and node.level else [target]
            out += names
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("wsss_fast.")]


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_from_a_layer_above(path):
    me = _top("wsss_fast." + ".".join(path.relative_to(PKG).with_suffix("").parts))
    assert me in LAYER, f"{path}: add its package to LAYER"
    above = [m for m in _imports(path) if LAYER[_top(m)] > LAYER[me]]
    assert not above, f"{path.relative_to(PKG)} imports {above}, a layer above its own"


def test_the_layer_check_sees_imports():
    """The checker itself: relative imports resolve, and a late step's import is flagged."""
    found = _imports(PKG / "cam" / "make.py")
    assert "wsss_fast.cls.model" in found and "wsss_fast.engine.files" in found
    assert LAYER[_top("wsss_fast.irn.sem_seg")] > LAYER[_top("wsss_fast.cam.make")]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_progress_bars_iterate_once(path):
    """No module uses tqdm.auto / tqdm.asyncio: their tqdm calls iter() on its iterable when
    created and iterates it again when looped over, so ``tqdm(loader)`` starts a DataLoader's
    workers twice and throws away the first set's prefetched batches (tqdm issue #1598)."""
    bad = [m for m in _all_imports(path) if m.split(".")[:2] in (["tqdm", "auto"], ["tqdm", "asyncio"],
                                                                  ["tqdm", "autonotebook"])]
    assert not bad, f"{path.relative_to(PKG)} imports {bad}; use `from tqdm import tqdm`"


def _all_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            out += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_the_progress_bar_check_sees_tqdm_auto(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from tqdm.auto import tqdm\nimport tqdm.asyncio\nfrom tqdm import auto\n")
    assert _all_imports(f) == ["tqdm.auto", "tqdm.auto.tqdm", "tqdm.asyncio", "tqdm", "tqdm.auto"]
