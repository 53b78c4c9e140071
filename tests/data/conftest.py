"""Fixtures of the data tests: one small synthetic SIIM set written once per session."""

from __future__ import annotations

import pytest

from wsss_fast.data.synthetic import write_synthetic_siim

N_IMAGES, SIZE, SEED = 20, 64, 0


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A 20-image, 64 px synthetic set in the competition layout (DICOM + PNG + CSV); read-only."""
    root = tmp_path_factory.mktemp("siim_synth")
    write_synthetic_siim(root, N_IMAGES, SIZE, SEED, 0.5, png=True, progress=False)
    return root
