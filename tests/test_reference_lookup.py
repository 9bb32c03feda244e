"""Where the tests find the recorded reference fixture, and how tests that need it are marked and skipped."""

from __future__ import annotations

from pathlib import Path

import conftest
import pytest

from transformers_baichuan_audio.parity import fixture as reference_fixtures
from transformers_baichuan_audio.parity.fixture import FIXTURE_ENV, default_fixture_dir


def test_lookup_prefers_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(FIXTURE_ENV, str(tmp_path / "elsewhere"))
    assert default_fixture_dir() == tmp_path / "elsewhere"  # as given, so that a wrong setting is reported


def test_lookup_falls_back_to_shared_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(FIXTURE_ENV, raising=False)
    fixture = tmp_path / "shared" / "fixtures" / "reference" / "tiny-a"
    monkeypatch.setattr(reference_fixtures, "checkout_fixture_dir", lambda: fixture)
    assert default_fixture_dir() is None  # nothing there yet
    fixture.mkdir(parents=True)
    (fixture / "config.json").write_text("{}")
    assert default_fixture_dir() == fixture


def test_checkout_location_is_the_sibling_shared_folder():
    checkout = Path(__file__).resolve().parent.parent
    assert reference_fixtures.checkout_fixture_dir() == checkout.parent / "shared/fixtures/reference/tiny-a"


class _Item:
    def __init__(self, fixturenames, marks=()):
        self.fixturenames = list(fixturenames)
        self.marks = [m.mark for m in marks]

    def add_marker(self, marker):
        self.marks.append(marker.mark)

    def get_closest_marker(self, name):
        return next((m for m in self.marks if m.name == name), None)


@pytest.mark.parametrize("present", [True, False])
def test_tests_using_the_fixture_are_marked_and_skipped_without_it(monkeypatch, tmp_path, present):
    monkeypatch.setattr(conftest, "default_fixture_dir", lambda: tmp_path if present else None)
    direct = _Item(["request", "reference_fixture"])
    indirect = _Item(["original_state_dict", "reference_fixture", "model"])  # closure of a fixture using it
    explicit = _Item(["tmp_path"], marks=[pytest.mark.reference])
    plain = _Item(["tmp_path"])
    conftest.pytest_collection_modifyitems(None, [direct, indirect, explicit, plain])
    for item in (direct, indirect, explicit):
        assert item.get_closest_marker("reference") is not None
        skip = item.get_closest_marker("skip")
        assert (skip is None) == present
        if skip is not None:
            assert FIXTURE_ENV in skip.kwargs["reason"]
    assert plain.marks == []
