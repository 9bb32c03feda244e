"""OpenMP worker teams on CPUs: one thread of heavy torch work at a time.

torch's CPU kernels run their parallel regions on OpenMP (GNU OpenMP, ``libgomp``, in the Linux wheels). Every OS
thread that runs a parallel region gets its own team of worker threads, kept until that thread exits. While the
process holds more OpenMP threads than cores (e.g. the model was loaded in the main thread, and a turn runs in a
generation thread), GNU OpenMP stops busy-waiting between regions: each region then waits for sleeping workers to
wake. A decode step runs thousands of small regions, so this costs a lot: measured on the project's 2-core build
machine, 64-89 µs instead of 9-16 µs per region, and the 0.5B-class model's audio frames at 5.8 instead of 8.5 per
second when generated in a second thread.

:func:`release_openmp_workers` lets the calling thread's workers exit (the OpenMP 5.0 routine
``omp_pause_resource_all(omp_pause_soft)``; they are created again the next time the thread runs a parallel region).
:class:`~transformers_baichuan_audio.chat.SpeechChat` calls it in the consuming thread before a turn's generation
thread starts, and the turn's tensor work (generation, code2wav, phrase joining) all runs in that one thread; its
ASR / TTS / whole-answer calls and :func:`~transformers_baichuan_audio.chat.speech_chat_from_args` (the model's
loading for the command line, the demo and the server) release the calling thread's workers when they return
(:func:`releases_openmp_workers`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re

#: ``omp_pause_soft`` of OpenMP 5.0's ``omp_pause_resource_t``.
OMP_PAUSE_SOFT = 1
_RUNTIME_NAME = re.compile(r"lib(gomp|omp|iomp5)([-.][^/]*)?\.(so|dylib)(\.\d+)*$")


@functools.cache
def openmp_runtimes() -> tuple[ctypes.CDLL, ...]:
    """The OpenMP runtimes loaded in this process (found in ``/proc/self/maps``: Linux) that have
    ``omp_pause_resource_all``; empty elsewhere."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return ()
    runtimes = []
    for path in sorted(paths):
        if not _RUNTIME_NAME.search(os.path.basename(path)):
            continue
        try:
            library = ctypes.CDLL(path)  # already loaded: the same handle, nothing new is initialised
        except OSError:
            continue
        if hasattr(library, "omp_pause_resource_all"):
            library.omp_pause_resource_all.argtypes = [ctypes.c_int]
            library.omp_pause_resource_all.restype = ctypes.c_int
            runtimes.append(library)
    return tuple(runtimes)


def release_openmp_workers() -> bool:
    """Let the OpenMP worker threads of the calling thread exit (in every loaded OpenMP runtime), so that another
    thread's heavy torch work is not slowed by them (module docstring). Harmless: the workers come back when this
    thread next runs a parallel region. Returns whether a runtime did it (False without an OpenMP runtime, on
    platforms without ``/proc``, or inside a parallel region)."""
    released = False
    for library in openmp_runtimes():
        released |= library.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0
    return released


def releases_openmp_workers(function):
    """Decorator: :func:`release_openmp_workers` in the calling thread when ``function`` returns or raises (for
    heavy torch work that may run in a thread which then idles while others work, e.g. the model's loading in the
    main thread, or a Gradio handler's ASR / TTS)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            release_openmp_workers()

    return wrapper


__all__ = ["openmp_runtimes", "release_openmp_workers", "releases_openmp_workers"]
