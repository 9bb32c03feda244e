"""The FastAPI application of ``baichuan-audio serve``: OpenAI-shaped routes on a :class:`.engine.ServingEngine`.

Routes: ``POST /v1/chat/completions`` (text and ``input_audio`` parts; ``modalities: ["text", "audio"]`` + ``audio:
{"voice", "format"}`` for a spoken answer; ``stream: true`` for SSE chunks), ``POST /v1/audio/transcriptions``
(multipart upload, base-model ASR), ``POST /v1/audio/speech`` (base-model TTS, the body streamed as it is decoded),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (no key needed).

Every error is a JSON body in OpenAI's shape (:class:`.schemas.APIError`); bad input is a 4xx, an unexpected failure
a 500 with a generic message (the traceback goes to the server log only). A client that disconnects cancels its
request: a waiting one leaves the queue, a running one's row ends at the next decoding step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import tempfile
import threading

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import AudioInputError, check_text, load_user_audio
from ..processing.processor import DEFAULT_VOICE
from . import schemas
from .batching import JobCancelledError, QueueFullError, ServerClosedError
from .engine import ServingEngine
from .schemas import APIError, bad_request

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ helpers
class _BodyLimit:
    """ASGI middleware: 413 (OpenAI error body) for request bodies beyond ``limit`` bytes, by ``Content-Length`` or
    while the body is received."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = APIError(413, f"the request body is larger than the limit of {self.limit} bytes", code="too_large")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except APIError as err:
            if started:
                raise
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)


class _EventPump:
    """Runs :meth:`ServingEngine.events` in a thread and hands its events to the event loop."""

    def __init__(self, engine: ServingEngine, request):
        self.engine, self.request = engine, request
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._work, name="baichuan-audio-request", daemon=True).start()

    def _post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed (server shut down)
            pass

    def _work(self) -> None:
        try:
            for event in self.engine.events(self.request):
                self._post(("event", event))
        except BaseException as err:  # handed to the route
            self._post(("error", err))
        else:
            self._post(("end", None))

    async def get(self, timeout: float | None = None):
        """The next event, None at the end; raises the job's error; ``TimeoutError`` after ``timeout``."""
        kind, item = await asyncio.wait_for(self.queue.get(), timeout)
        if kind == "error":
            raise item
        return item if kind == "event" else None

    def cancel(self) -> None:
        if not self.request.job.finished.is_set():
            self.engine.cancel(self.request)


def _job_error(err: BaseException) -> APIError:
    if isinstance(err, JobCancelledError):
        return APIError(499, "the request was cancelled", code="cancelled")
    if isinstance(err, ServerClosedError):
        return APIError(503, str(err), type_="server_error", code="shutting_down")
    if isinstance(err, AudioInputError):
        return bad_request(str(err))
    logger.error("generation failed", exc_info=err)
    return APIError(500, "generation failed on the server", type_="server_error", code="internal_error")


async def _collect(pump: _EventPump, http_request: Request) -> list:
    """Every event of a non-streamed request; cancels it when the client disconnects."""
    events = []
    try:
        while True:
            try:
                event = await pump.get(timeout=0.25)
            except TimeoutError:
                if await http_request.is_disconnected():
                    pump.cancel()
                    raise APIError(499, "the client disconnected", code="cancelled") from None
                continue
            if event is None:
                return events
            events.append(event)
    except APIError:
        raise
    except Exception as err:
        raise _job_error(err) from err
    finally:
        pump.cancel()


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _load_audio_bytes(data: bytes, fmt: str, limits) -> tuple:
    """Validated (waveform, rate) of uploaded audio bytes (checks of :func:`..chat.load_user_audio`)."""
    with tempfile.TemporaryDirectory(prefix="baichuan-audio-upload-") as tmp:
        path = os.path.join(tmp, f"input.{fmt}")
        with open(path, "wb") as out:
            out.write(data)
        return load_user_audio(path, limits)


# ------------------------------------------------------------------------------------------------ the app
def build_app(engine: ServingEngine, model_id: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` as ``model_id``; ``api_key``: required as ``Authorization: Bearer KEY``."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(engine.close)  # refuse new jobs, let the running batch end

    app = FastAPI(
        title="Baichuan-Audio OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    limits = engine.limits
    app.add_middleware(_BodyLimit, limit=int(limits.max_upload_bytes * 4 / 3) + (1 << 20))
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err):
        return JSONResponse(bad_request(f"invalid request: {err.errors()}").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        kind = "not_found" if err.status_code == 404 else None
        return JSONResponse(APIError(err.status_code, str(err.detail), code=kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, err):
        logger.error("unexpected error", exc_info=err)
        body = APIError(500, "internal server error", type_="server_error", code="internal_error").body()
        return JSONResponse(body, status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    def check_model(name) -> None:
        if name is None:
            raise bad_request("'model' is required", "model")
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_id!r}", "model",
                           code="model_not_found")  # fmt: skip

    async def submit(function, *args):
        try:
            return await run_in_threadpool(function, *args)
        except QueueFullError as err:
            raise APIError(429, str(err), type_="rate_limit_error", code="queue_full") from None
        except ServerClosedError as err:
            raise APIError(503, str(err), type_="server_error", code="shutting_down") from None
        except AudioInputError as err:
            raise bad_request(str(err)) from None

    # -------------------------------------------------------------------------------------------- routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **engine.batcher.stats()}

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "baichuan-audio"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        authorize(request)
        check_model(name)
        return model_card()

    def convert_messages(messages) -> list[dict]:
        """OpenAI messages -> processor messages (audio decoded and checked, text checked)."""
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list", "messages")
        if len(messages) > limits.max_messages:
            raise bad_request(f"{len(messages)} messages; the limit is {limits.max_messages}", "messages")
        out = []
        for i, message in enumerate(messages):
            param = f"messages[{i}]"
            if not isinstance(message, dict):
                raise bad_request("each message must be an object", param)
            role = {"developer": "system"}.get(message.get("role"), message.get("role"))
            if role not in ("system", "user", "assistant"):
                raise bad_request(f"unsupported role {message.get('role')!r} (system, user, assistant)", param)
            if role == "assistant" and message.get("audio") is not None:
                raise bad_request("earlier spoken answers cannot be referenced by id: send their transcript as text",
                                  f"{param}.audio")  # fmt: skip
            content = message.get("content")
            if content is None and role == "assistant":
                content = ""
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                raise bad_request("'content' must be a string or a list of parts", f"{param}.content")
            converted = []
            for j, part in enumerate(parts):
                where = f"{param}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise bad_request("a text part needs a 'text' string", where)
                    text = check_text(part["text"], engine.chat.limits)
                    if text:
                        converted.append({"type": "text", "text": text})
                elif kind == "input_audio" and role != "assistant":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise bad_request("an input_audio part needs 'input_audio': {'data', 'format'}", where)
                    fmt = audio.get("format", "wav")
                    if fmt not in schemas.INPUT_AUDIO_FORMATS:
                        raise bad_request(f"input audio format {fmt!r} (supported: {schemas.INPUT_AUDIO_FORMATS})",
                                          f"{where}.input_audio.format")  # fmt: skip
                    data = schemas.decode_base64(
                        audio.get("data"), f"{where}.input_audio.data", limits.max_upload_bytes
                    )
                    wave, rate = _load_audio_bytes(data, fmt, engine.chat.limits)
                    converted.append({"type": "audio", "audio": wave, "sampling_rate": rate})
                else:
                    raise bad_request(f"unsupported content part {kind!r} for the {role} role", where)
            if not converted and role == "user":
                raise bad_request("a user message needs some text or audio", f"{param}.content")
            if converted:
                out.append({"role": role, "content": converted})
        if out[-1]["role"] != "user":
            raise bad_request("the last message must be the user's", "messages")
        return out

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await _json_body(request)
        check_model(body.get("model"))
        modalities = body.get("modalities") or ["text"]
        if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or "text" not in modalities:
            raise bad_request("modalities must be ['text'] or ['text', 'audio']", "modalities")
        speak = "audio" in modalities
        stream = bool(body.get("stream"))
        audio_options = body.get("audio") or {}
        if not isinstance(audio_options, dict):
            raise bad_request("'audio' must be an object {'voice', 'format'}", "audio")
        if speak and not engine.can_speak:
            raise bad_request("this model was loaded without the vocoder: it cannot answer in audio", "modalities")
        fmt = audio_options.get("format", "pcm16" if stream else "wav")
        if speak and fmt not in schemas.CHAT_AUDIO_FORMATS:
            raise bad_request(f"audio format {fmt!r} (supported: {schemas.CHAT_AUDIO_FORMATS})", "audio.format")
        if speak and stream and fmt != "pcm16":
            raise bad_request("a streamed spoken answer needs audio.format 'pcm16'", "audio.format")
        voice = audio_options.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise bad_request("'audio.voice' must be a string", "audio.voice")
        voice = (
            DEFAULT_VOICE if voice is None or voice in schemas.OPENAI_VOICES else check_text(voice, engine.chat.limits)
        )
        if body.get("n") not in (None, 1):
            raise bad_request("only n=1 is supported", "n")
        if body.get("tools") or body.get("functions"):
            raise bad_request("tools / function calling are not supported by this model", "tools")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        try:
            settings = engine.settings(body.get("temperature"), body.get("top_p"), max_tokens)
        except AudioInputError as err:
            raise bad_request(str(err)) from None
        messages = await submit(convert_messages, body.get("messages"))
        job = await submit(engine.chat_job, messages, voice, speak, settings)
        pump = _EventPump(engine, job)
        cid, created = schemas.new_id("chatcmpl"), schemas.now()
        audio_id = schemas.new_id("audio")
        if not stream:
            events = await _collect(pump, request)
            done = events[-1]
            message = {"role": "assistant", "content": done.text}
            if speak:
                import numpy as np

                pieces = [e.audio for e in events if e.kind == "audio"]
                samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
                data = schemas.wav_file_bytes(samples) if fmt == "wav" else schemas.pcm16_bytes(samples)
                message["content"] = None
                message["audio"] = {
                    "id": audio_id,
                    "data": base64.b64encode(data).decode("ascii"),
                    "expires_at": created + 3600,
                    "transcript": done.text,
                }
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": schemas.usage(job.prompt_tokens, done.completion_tokens),
            }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def sse():
            def line(payload) -> str:
                return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

            try:
                yield line(
                    schemas.chat_chunk(cid, model_id, created, {"role": "assistant", "content": None if speak else ""})
                )
                while True:
                    try:
                        event = await pump.get()
                    except Exception as err:
                        error = err if isinstance(err, APIError) else _job_error(err)
                        yield line(error.body())
                        return
                    if event is None:
                        break
                    if event.kind == "text":
                        delta = (
                            {"audio": {"id": audio_id, "transcript": event.text}} if speak else {"content": event.text}
                        )
                    elif event.kind == "audio":
                        data = base64.b64encode(schemas.pcm16_bytes(event.audio)).decode("ascii")
                        delta = {"audio": {"id": audio_id, "data": data}}
                    else:  # done
                        final = {"audio": {"id": audio_id, "expires_at": created + 3600}} if speak else {}
                        yield line(schemas.chat_chunk(cid, model_id, created, final, finish_reason="stop"))
                        if include_usage:
                            chunk = schemas.chat_chunk(cid, model_id, created, {})
                            chunk["choices"] = []
                            chunk["usage"] = schemas.usage(job.prompt_tokens, event.completion_tokens)
                            yield line(chunk)
                        continue
                    yield line(schemas.chat_chunk(cid, model_id, created, delta))
                yield "data: [DONE]\n\n"
            finally:  # also on a client disconnect (the response task is cancelled)
                pump.cancel()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        authorize(request)
        try:
            form = await request.form(max_files=1, max_fields=16)
        except APIError:
            raise
        except Exception as err:
            raise bad_request(f"expected a multipart/form-data upload with a 'file' field ({err})") from None
        check_model(form.get("model"))
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_request("'file' (an audio file upload) is required", "file")
        response_format = form.get("response_format") or "json"
        if response_format not in ("json", "text", "verbose_json"):
            raise bad_request(f"response_format {response_format!r} (supported: json, text, verbose_json)",
                              "response_format")  # fmt: skip
        data = await upload.read()
        if len(data) > limits.max_upload_bytes:
            raise APIError(413, f"the file is larger than the limit of {limits.max_upload_bytes} bytes", "file",
                           code="too_large")  # fmt: skip
        suffix = os.path.splitext(upload.filename or "")[1].lstrip(".").lower()
        fmt = suffix if suffix in schemas.INPUT_AUDIO_FORMATS else "wav"
        temperature = form.get("temperature")
        try:
            settings = engine.settings(float(temperature) if temperature not in (None, "") else None)
        except (AudioInputError, ValueError) as err:
            raise bad_request(str(err), "temperature") from None
        wave, rate = await submit(_load_audio_bytes, data, fmt, engine.chat.limits)
        job = await submit(engine.asr_job, wave, rate, settings)
        events = await _collect(_EventPump(engine, job), request)
        text = events[-1].text
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "verbose_json":
            return {"task": "transcribe", "duration": wave.shape[0] / rate, "text": text, "segments": []}
        return {"text": text}

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        authorize(request)
        body = await _json_body(request)
        check_model(body.get("model"))
        text = body.get("input")
        if not isinstance(text, str):
            raise bad_request("'input' (the text to speak) is required", "input")
        response_format = body.get("response_format") or "wav"
        if response_format not in schemas.SPEECH_FORMATS:
            raise bad_request(f"response_format {response_format!r} (supported: {schemas.SPEECH_FORMATS})",
                              "response_format")  # fmt: skip
        if body.get("speed") not in (None, 1, 1.0):
            raise bad_request("only speed 1.0 is supported", "speed")
        if body.get("stream_format") not in (None, "audio"):
            raise bad_request("only stream_format 'audio' is supported", "stream_format")
        settings = engine.settings()
        job = await submit(engine.tts_job, text, settings)
        pump = _EventPump(engine, job)

        async def audio():
            try:
                if response_format == "wav":
                    yield schemas.streaming_wav_header()
                while True:
                    try:
                        event = await pump.get()
                    except Exception as err:
                        _job_error(err)  # logged; the body ends early (the status was sent already)
                        return
                    if event is None:
                        return
                    if event.kind == "audio":
                        yield schemas.pcm16_bytes(event.audio)
            finally:
                pump.cancel()

        media = "audio/wav" if response_format == "wav" else "audio/pcm"
        return StreamingResponse(audio(), media_type=media, headers={"X-Sample-Rate": str(schemas.OUTPUT_RATE)})

    return app


__all__ = ["build_app"]
