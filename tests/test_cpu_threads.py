"""OpenMP worker teams: ``release_openmp_workers`` lets the calling thread's workers exit (they come back on demand)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from transformers_baichuan_audio import cpu_threads

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads in /proc (Linux)")


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_release_lets_the_calling_threads_openmp_workers_exit(two_threads):
    if not cpu_threads.openmp_runtimes():
        pytest.skip("no OpenMP runtime with omp_pause_resource_all is loaded (torch without OpenMP, or no /proc)")
    counts, results = {}, {}
    x = torch.arange(1 << 20, dtype=torch.float32)  # far above torch's parallel grain size: a parallel region

    def run():  # a fresh thread: its own OpenMP team, nothing else of the test process in it
        results["first"] = (x * 2).sum()
        counts["with_team"] = _os_threads()
        counts["released"] = cpu_threads.release_openmp_workers()
        counts["after_release"] = _os_threads()
        results["again"] = (x * 2).sum()  # the workers come back on demand
        counts["team_again"] = _os_threads()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert counts["released"] is True
    assert counts["with_team"] - counts["after_release"] == 1  # one worker besides the thread itself (2 threads)
    assert counts["team_again"] == counts["with_team"]
    expected = float(x.double().sum() * 2)
    assert float(results["first"]) == pytest.approx(expected) and float(results["again"]) == pytest.approx(expected)


def test_release_is_a_no_op_without_a_team():
    # a thread that never ran a parallel region: nothing to release, and nothing breaks
    out = {}
    thread = threading.Thread(
        target=lambda: out.setdefault("threads", (_os_threads(), cpu_threads.release_openmp_workers(), _os_threads()))
    )
    thread.start()
    thread.join()
    before, _, after = out["threads"]
    assert before == after


def test_decorated_calls_release_even_when_they_raise(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_threads, "release_openmp_workers", lambda: calls.append(threading.get_ident()))

    @cpu_threads.releases_openmp_workers
    def fails():
        raise KeyError("boom")

    @cpu_threads.releases_openmp_workers
    def works(value):
        return value + 1

    assert works(1) == 2
    with pytest.raises(KeyError, match="boom"):
        fails()
    assert calls == [threading.get_ident()] * 2
    assert works.__name__ == "works"
