"""The streaming voice-chat app (Gradio): speech chat, ASR and TTS tabs over the engine of :mod:`.chat`.

:func:`make_demo` wraps a :class:`~.chat.SpeechChat` in a ``gr.Blocks`` app and builds nothing at import;
:func:`launch` serves it on 127.0.0.1 (never a public share link); :func:`main` (= ``baichuan-audio demo``) loads
the model from the command-line options and serves it.

Audio streaming. The engine streams 24 kHz chunks (see :mod:`.chat`); Gradio gets 16-bit WAV bytes per chunk (float
chunks would be rescaled by each chunk's own peak).

History. Each session's conversation lives in a ``gr.State`` as processor messages plus their display form; the
assistant's speech is kept as its generated CODES, never as waveforms.

Limits (:class:`~.chat.InputLimits`). Besides the engine's checks of user input: per session one turn at a time and
at most ``max_turns`` turns (then "Clear"); the app's queue holds at most ``max_queue`` waiting requests (Gradio
refuses more) and runs ``concurrency`` turns at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading

import numpy as np

from .chat import (
    VOICES,
    AudioInputError,
    InputLimits,
    SpeechChat,
    speech_chat_from_args,
    to_pcm16,
    wav_bytes,
)
from .loading import add_model_arguments
from .processing.processor import DEFAULT_VOICE, OUTPUT_SAMPLING_RATE


# ------------------------------------------------------------------------------------------------------ the app
def _chat_display(history: list[dict]) -> list[dict]:
    return [entry["display"] for entry in history]


def _describe_user(message: dict) -> str:
    parts = []
    for item in message["content"]:
        if item["type"] == "audio":
            parts.append(f"🎤 ({item['audio'].shape[0] / item['sampling_rate']:.1f} s of speech)")
        elif item["type"] == "text":
            parts.append(item["text"])
    return "\n".join(parts)


def make_demo(
    model,
    processor,
    generation_kwargs: dict | None = None,
    limits: InputLimits | None = None,
    seed: int = 0,
    notice: str | None = None,
    stream_audio: bool | None = None,
    first_chunk_frames: int | None = None,
    state_pool=None,
    chunk_frames: int | None = None,
):
    """Build the Gradio app (``gr.Blocks``); nothing is launched. Tabs: speech chat, ASR, TTS.

    The send button's function (``respond``, a generator) is the streaming turn: it yields (chatbot messages, answer
    audio as 16-bit WAV bytes or None, status text, new history, audio input, text input) updates.

    ``notice`` is shown at the top (e.g. that a random model produces noise). ``stream_audio``: stream the answer's
    audio chunk by chunk (needs ``ffmpeg``, which Gradio uses to re-encode streamed audio; default: when it is
    installed), else the whole answer's audio is sent once the turn ends; each chunk is yielded as soon as the
    code2wav streaming decoder returns it, while the answer is still being generated. ``first_chunk_frames`` /
    ``chunk_frames``: the speech chunk schedule and ``state_pool``: the streaming state kept across turns
    (:class:`~.chat.SpeechChat`).
    """
    import gradio as gr

    chat = SpeechChat(
        model,
        processor,
        generation_kwargs,
        seed=seed,
        limits=limits,
        first_chunk_frames=first_chunk_frames,
        chunk_frames=chunk_frames,
        state_pool=state_pool,
    )
    if stream_audio is None:
        stream_audio = shutil.which("ffmpeg") is not None
    stops: dict[str, threading.Event] = {}  # the running turn of each session (keyed by Gradio's session hash)
    lock = threading.Lock()

    def respond(audio, text, voice, speak, history, request: gr.Request = None):
        """Generator of (chatbot, answer audio, status, history, cleared audio input, cleared text)."""
        history = list(history or [])
        session = getattr(request, "session_hash", None) or "local"
        with lock:
            busy = session in stops
            if not busy:
                stop = stops[session] = threading.Event()
        if busy:  # per-session limit: one turn at a time (the running turn keeps its stop button)
            yield (
                _chat_display(history),
                None,
                "⚠️ A turn is still running: wait for it or press Stop.",
                history,
                gr.skip(),
                gr.skip(),
            )
            return
        try:
            yield from _respond(audio, text, voice, speak, history, stop)
        finally:
            with lock:
                stops.pop(session, None)

    def _respond(audio, text, voice, speak, history, stop):
        if len(history) // 2 >= chat.limits.max_turns:
            message = f"⚠️ This conversation has {chat.limits.max_turns} turns, the limit: press Clear to start again."
            yield _chat_display(history), None, message, history, gr.skip(), gr.skip()
            return
        try:
            user = chat.user_message(audio, text)
        except AudioInputError as err:
            yield _chat_display(history), None, f"⚠️ {err}", history, gr.skip(), gr.skip()
            return
        shown = _chat_display(history) + [
            {"role": "user", "content": _describe_user(user)},
            {"role": "assistant", "content": ""},
        ]
        yield list(shown), None, "Thinking…", history, None, ""
        conversation, answer, pcm = [*_model_messages(history), user], "", []
        try:
            for event in chat.stream_turn(conversation, voice=voice, speak=speak, stop=stop):
                if event.kind == "text":
                    answer += event.text
                    shown[-1] = {"role": "assistant", "content": answer}
                    yield list(shown), None, "Answering…", history, gr.skip(), gr.skip()
                elif event.kind == "audio":
                    pcm.append(to_pcm16(event.audio))
                    if stream_audio:
                        yield list(shown), wav_bytes(pcm[-1]), "Answering…", history, gr.skip(), gr.skip()
                else:
                    shown[-1] = {"role": "assistant", "content": event.text or answer}
                    new_history = [*history, _stored(user, shown[-2]), _stored(event.message, shown[-1])]
                    status = "Stopped." if event.stopped else "Done."
                    audio_out = wav_bytes(np.concatenate(pcm)) if (pcm and not stream_audio) else None
                    yield shown, audio_out, status, new_history, gr.skip(), gr.skip()
        except AudioInputError as err:  # e.g. the conversation no longer fits the model's context
            yield _chat_display(history), None, f"⚠️ {err}", history, gr.skip(), gr.skip()
        except Exception as err:  # never a stack trace in the UI
            yield (
                shown,
                None,
                f"⚠️ The model failed on this turn: {type(err).__name__}: {err}",
                history,
                gr.skip(),
                gr.skip(),
            )

    def stop_turn(request: gr.Request = None):
        event = stops.get(getattr(request, "session_hash", None) or "local")
        if event is not None:
            event.set()
        return "Stopping…"

    def clear():
        return [], None, "", [], None, ""

    def transcribe(audio):
        try:
            return chat.transcribe(audio), ""
        except AudioInputError as err:
            return "", f"⚠️ {err}"
        except Exception as err:
            return "", f"⚠️ ASR failed: {type(err).__name__}: {err}"

    def synthesize(text):
        try:
            return (OUTPUT_SAMPLING_RATE, to_pcm16(chat.synthesize(text))), ""
        except AudioInputError as err:
            return None, f"⚠️ {err}"
        except Exception as err:
            return None, f"⚠️ TTS failed: {type(err).__name__}: {err}"

    with gr.Blocks(title="Baichuan-Audio") as demo:
        gr.Markdown("# Baichuan-Audio\nSpeak (or type) to the model; it answers in text and, if you like, in speech.")
        if notice:
            gr.Markdown(f"**{notice}**", elem_id="notice")
        with gr.Tab("Speech chat"):
            history = gr.State([])
            chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360)
            with gr.Row():
                audio_in = gr.Audio(
                    sources=["microphone", "upload"], type="filepath", label="Your speech", elem_id="audio_in"
                )
                with gr.Column():
                    text_in = gr.Textbox(label="Or type (optional)", lines=2, elem_id="text_in")
                    voice = gr.Dropdown(VOICES, value=DEFAULT_VOICE, label="Voice", allow_custom_value=True)
                    speak = gr.Checkbox(value=chat.can_speak, label="Speak the answer", interactive=chat.can_speak)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                stop = gr.Button("Stop", elem_id="stop")
                clear_btn = gr.Button("Clear", elem_id="clear")
            answer_audio = gr.Audio(
                label="Spoken answer",
                streaming=stream_audio,
                autoplay=True,
                interactive=False,
                elem_id="answer_audio",
            )
            status = gr.Markdown("", elem_id="status")
            send_event = send.click(
                respond,
                [audio_in, text_in, voice, speak, history],
                [chatbot, answer_audio, status, history, audio_in, text_in],
            )
            stop.click(stop_turn, None, status, queue=False)
            clear_btn.click(
                clear, None, [chatbot, answer_audio, status, history, audio_in, text_in], cancels=[send_event]
            )
        with gr.Tab("ASR"):
            asr_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech")
            asr_btn = gr.Button("Transcribe", variant="primary")
            asr_out = gr.Textbox(label="Transcript")
            asr_status = gr.Markdown("")
            asr_btn.click(transcribe, asr_in, [asr_out, asr_status])
        with gr.Tab("TTS"):
            tts_in = gr.Textbox(label="Text", lines=3)
            tts_btn = gr.Button("Speak", variant="primary")
            tts_out = gr.Audio(label="Speech", interactive=False)
            tts_status = gr.Markdown("")
            tts_btn.click(synthesize, tts_in, [tts_out, tts_status])
    demo.queue(default_concurrency_limit=chat.limits.concurrency, max_size=chat.limits.max_queue)
    return demo


def _stored(message: dict, shown: dict) -> dict:
    """History entry: the processor message plus its display form (so the chatbot can be redrawn)."""
    return {"message": message, "display": shown}


def _model_messages(history: list[dict]) -> list[dict]:
    return [entry["message"] for entry in history]


def launch(demo, host: str | None = None, port: int | None = None, **kwargs):
    """Serve ``demo`` on ``host`` (default: ``$GRADIO_SERVER_NAME``, which hosting platforms such as Spaces set, else
    127.0.0.1); never a public share link."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    return demo.launch(server_name=host, server_port=port, share=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Options of ``baichuan-audio demo``: the model options of :func:`.loading.add_model_arguments`, ``--host``,
    ``--port``."""
    parser = argparse.ArgumentParser(
        prog="baichuan-audio demo", description="launch the Gradio voice-chat app (speech chat, ASR, TTS)"
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``baichuan-audio demo`` to ``parser``."""
    add_model_arguments(parser)
    parser.add_argument(
        "--host", default=None, help="interface to bind (default $GRADIO_SERVER_NAME or 127.0.0.1; no share link)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port")


def serve(args: argparse.Namespace) -> int:
    """Load the model of the parsed options (:func:`build_parser`), build the app and serve it."""
    from .tiny_random import NOISE_NOTICE, TINY_RANDOM

    chat = speech_chat_from_args(args)
    notice = NOISE_NOTICE if args.model == TINY_RANDOM else None
    demo = make_demo(
        chat.model,
        chat.processor,
        chat.generation_kwargs,
        seed=args.seed,
        notice=notice,
        first_chunk_frames=chat.schedule.get("first_chunk_frames"),
        state_pool=chat.state_pool,
        chunk_frames=chat.schedule.get("chunk_frames"),
    )
    launch(demo, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``baichuan-audio demo [options]``: load the model (``--model``, see ``--help``), build the app, serve it on
    127.0.0.1 (or ``--host``)."""
    return serve(build_parser().parse_args(sys.argv[1:] if argv is None else argv))


__all__ = ["add_arguments", "build_parser", "launch", "main", "make_demo", "serve"]


if __name__ == "__main__":
    sys.exit(main())
