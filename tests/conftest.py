"""Shared pytest fixtures: the reference parity fixture set and small configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from transformers_baichuan_audio.reference_fixtures import ReferenceFixture, default_fixture_dir  # noqa: E402

# The fixtures were recorded with 1 intra-op thread; the tiny models' small convolutions also run much faster on one
# OpenMP thread than on two on the shared 2-core machines.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_fixture() -> ReferenceFixture:
    """The tiny-a reference fixture (original weights + recorded outputs of the original code)."""
    path = default_fixture_dir()
    if path is None:
        pytest.fail("reference fixture not found: set BAICHUAN_AUDIO_FIXTURE or keep shared/ beside the checkout")
    return ReferenceFixture(path)


@pytest.fixture(scope="session")
def original_state_dict(reference_fixture) -> dict[str, torch.Tensor]:
    return reference_fixture.original_state_dict()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The fixtures were recorded with 1 intra-op thread; 2 threads change roundoff by ~1e-6 only.
    torch.manual_seed(0)
    yield
