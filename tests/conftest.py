"""Shared pytest fixtures: the reference parity fixture set and small configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from transformers_baichuan_audio.parity.fixture import (  # noqa: E402
    FIXTURE_ENV,
    ReferenceFixture,
    checkout_fixture_dir,
    default_fixture_dir,
)

#: Fixtures that read the recorded reference fixture: every test using one (directly or through another fixture)
#: gets the ``reference`` marker automatically and is skipped when the fixture is absent.
REFERENCE_FIXTURES = ("reference_fixture", "original_state_dict")
SKIP_REASON = (
    f"reference fixture not found: set {FIXTURE_ENV} to a copy of shared/fixtures/reference/tiny-a "
    f"(or place it at {checkout_fixture_dir()}); see the README"
)

# The fixtures were recorded with 1 intra-op thread; the tiny models' small convolutions also run much faster on one
# OpenMP thread than on two on the shared 2-core machines.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs the reference fixture ``reference``; skip them (with the reason) without it."""
    missing = default_fixture_dir() is None
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in REFERENCE_FIXTURES):
            item.add_marker(pytest.mark.reference)
        if missing and item.get_closest_marker("reference") is not None:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def reference_fixture() -> ReferenceFixture:
    """The tiny-a reference fixture (original weights + recorded outputs of the original code)."""
    path = default_fixture_dir()
    if path is None:  # reached only through request.getfixturevalue(); marked tests are skipped before this
        pytest.skip(SKIP_REASON)
    if not (path / "config.json").is_file():
        pytest.fail(f"{FIXTURE_ENV}={path} is not a reference fixture directory (no config.json)")
    return ReferenceFixture(path)


@pytest.fixture(scope="session")
def original_state_dict(reference_fixture) -> dict[str, torch.Tensor]:
    return reference_fixture.original_state_dict()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The fixtures were recorded with 1 intra-op thread; 2 threads change roundoff by ~1e-6 only.
    torch.manual_seed(0)
    yield


@pytest.fixture
def two_threads():
    """``torch.get_num_threads()`` two, as on the project's CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
