"""OpenAI-compatible HTTP API for Baichuan-Audio (``baichuan-audio serve``).

Modules: :mod:`.cli` (options, launcher, ``serve_in_thread``), :mod:`.app` (FastAPI routes), :mod:`.engine`
(requests -> batched ``generate`` rows -> per-request event streams), :mod:`.batching` (the dynamic batcher and the
per-row streamer), :mod:`.schemas` (OpenAI request / response shapes and errors), :mod:`.limits`. Importing this
package imports nothing heavy; FastAPI, uvicorn and torch are imported by the modules that need them.

Why our own FastAPI + uvicorn app and not ``transformers serve`` (checked on transformers 5.24): its chat handler
rejects the ``audio`` and ``modalities`` fields outright (``UNUSED_CHAT_COMPLETION_FIELDS`` in
``transformers/cli/serving/chat_completion.py``), so it has no way to return speech; it drives ``generate`` with its
own text streamer (``put`` / ``end`` of token ids), while our spoken answers need the interleaved loop of
``generate(output_audio=True)`` with per-row text + audio-frame callbacks and code2wav streaming decoding; its
batching is transformers' continuous batching (paged attention, ``init_continuous_batching``), offered only to plain
LLMs and not usable with our custom generation loop; and its handlers, model manager and request plumbing live in
``transformers.cli.serving`` as internal classes with no documented extension hook. Hosting this model there would
mean subclassing or patching those internals, which the project rules exclude (public API only). The routes here
follow the same OpenAI shapes, so the same clients work against both.
"""
