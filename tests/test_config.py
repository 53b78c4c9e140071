"""Shipped configs: each one loads and builds training batches of the right shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from wsss_fast.config import load_config
from wsss_fast.data import train_transform
from wsss_fast.seg.data import train_transform as seg_train_transform
from wsss_fast.cls.train import _collate

# Images of different sizes and aspect ratios, as VOC has them (and one smaller than a crop).
SIZES = [(375, 500), (500, 375), (200, 230)]


@pytest.mark.parametrize("name", [None, "demo", "demo_voc", "siim", "voc"])
def test_shipped_config_builds_training_batches(name):
    torch.manual_seed(0)
    cfg = load_config(name)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    masks = [rng.integers(0, 3, (h, w)).astype(np.uint8) for h, w in SIZES]

    # step 1: one classifier batch (raises when the images of a batch differ in size)
    x, y = _collate([{"image": train_transform(cfg)(im), "label": [1.0]} for im in images])
    assert x.shape[:2] == (3, 3) and x.dtype == torch.float32 and y.shape == (3, 1)

    # step 3: one segmentation batch of images with their label maps
    tf = seg_train_transform(cfg)
    pairs = [tf(tv_tensors.Image(torch.from_numpy(im).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(m)))
             for im, m in zip(images, masks)]
    xs = torch.stack([p[0].as_subclass(torch.Tensor) for p in pairs])
    ms = torch.stack([p[1].as_subclass(torch.Tensor) for p in pairs])
    assert xs.shape[0] == 3 and xs.shape[-2:] == ms.shape[-2:]
    assert set(ms.unique().tolist()) <= {0, 1, 2, 255}


# --- unknown keys: at any depth, in a file or an override, named with a suggestion ---------

@pytest.mark.parametrize("override, key, suggestion", [
    ("cls.epoch=1", "cls.epoch", "cls.epochs"),
    ("clss.lr=1", "clss.lr", "cls.lr"),
    ("cls.dropblock.pp=0.1", "cls.dropblock.pp", "cls.dropblock.p"),
    ("ir_label.crf.gaus_sxy=2", "ir_label.crf.gauss_sxy", "ir_label.crf.gauss_sxy"),
])
def test_override_typo_is_an_error_with_a_suggestion(override, key, suggestion):
    from wsss_fast.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    msg = str(err.value)
    assert f"override '{override}'" in msg and f"'{override.split('=')[0]}'" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_dict_override_typo_is_an_error():
    from wsss_fast.config import ConfigError

    with pytest.raises(ConfigError, match=r"'irn\.bakbone' \(did you mean 'irn\.backbone'\?\)"):
        load_config(None, {"irn": {"bakbone": "resnet18"}})


@pytest.mark.parametrize("text, key, suggestion", [
    ("clss:\n  lr: 1\n", "clss.lr", "cls.lr"),
    ("cls:\n  epoch: 3\n", "cls.epoch", "cls.epochs"),
    ("cls:\n  dropblock:\n    blocksize: 5\n", "cls.dropblock.blocksize", "cls.dropblock.block_size"),
    ("dataset:\n  synthetic:\n    num_image: 5\n", "dataset.synthetic.num_image", "dataset.synthetic.num_images"),
])
def test_file_typo_at_any_depth_is_an_error_naming_the_file(tmp_path, text, key, suggestion):
    from wsss_fast.config import ConfigError

    f = tmp_path / "my.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg and f"unknown config key '{key}'" in msg and f"did you mean '{suggestion}'" in msg


def test_section_given_a_scalar_is_an_error():
    from wsss_fast.config import ConfigError

    with pytest.raises(ConfigError, match="'cls.dropblock' is a section"):
        load_config(None, ["cls.dropblock=3"])


def test_valid_overrides_still_apply():
    cfg = load_config("demo", ["cls.epochs=1", "cam.scales=[1.0,0.5]", "cls.dropblock.p=0.3"])
    assert cfg["cls"]["epochs"] == 1 and cfg["cam"]["scales"] == [1.0, 0.5]
    assert cfg["cls"]["dropblock"]["p"] == 0.3 and cfg["cls"]["dropblock"]["block_size"] == 7


def test_cli_rejects_a_typo_before_running(tmp_path, capsys):
    from wsss_fast.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train-cls", "--config", "demo", "--out", str(tmp_path / "run"), "cls.epoch=1", "clss.lr=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'cls.epoch'" in err and "did you mean 'cls.epochs'" in err
    assert not (tmp_path / "run" / "cls").exists()


def test_a_key_twice_in_a_file_is_an_error(tmp_path):
    """YAML keeps the last of two equal keys and drops the first without a word; a config
    file with a section (or key) written twice is refused, naming the key and the line."""
    from wsss_fast.config import ConfigError

    f = tmp_path / "twice.yaml"
    f.write_text("seg:\n  epochs: 3\nsem_seg:\n  steps: 4\nseg:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="'seg' appears twice.*line 5"):
        load_config(f)
    f.write_text("seg:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="'epochs' appears twice"):
        load_config(f)
    f.write_text("seg:\n  epochs: 3\nsem_seg:\n  steps: 4\n")
    assert load_config(f)["seg"]["epochs"] == 3


def test_empty_section_keeps_the_defaults(tmp_path):
    """An empty section in a config file (``ir_label:`` with its keys commented out), or a dict
    override giving a section None, keeps that section's defaults instead of wiping them."""
    defaults = load_config(None)
    f = tmp_path / "empty.yaml"
    f.write_text("cls:\n  epochs: 3\nir_label:\n# conf_fg_thres: 0.3\n")
    cfg = load_config(f)
    assert cfg["ir_label"] == defaults["ir_label"] and cfg["cls"]["epochs"] == 3
    assert load_config(None, {"ir_label": None})["ir_label"] == defaults["ir_label"]


def test_override_value_may_contain_equals_signs():
    """Only the first '=' of ``key=value`` separates the key: a path holding '=' is kept whole."""
    cfg = load_config(None, ["dataset.root=/d/a=b", "dataset.csv=x=1=2.csv"])
    assert cfg["dataset"]["root"] == "/d/a=b" and cfg["dataset"]["csv"] == "x=1=2.csv"
