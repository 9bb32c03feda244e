"""Hugging Face Space entry point: the Baichuan-Audio streaming voice chat.

A thin wrapper around ``transformers_baichuan_audio.demo.main`` (= ``baichuan-audio demo``; the app is built by
``transformers_baichuan_audio.demo.make_demo``). The model is read from
``BAICHUAN_AUDIO_MODEL`` (default: the released ``baichuan-inc/Baichuan-Audio-Instruct``, downloaded and converted on
start-up; set ``BAICHUAN_AUDIO_VOCODER`` to the HiFT weights if the snapshot does not contain them) or
``tiny-random`` to try the interface without a GPU (its output is noise). Run locally with ``python app.py``: it
serves on 127.0.0.1 (Spaces set ``GRADIO_SERVER_NAME`` themselves).
"""

import os
import sys

from transformers_baichuan_audio.loading import DEFAULT_MODEL
from transformers_baichuan_audio.demo import main

if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    argv = ["--model", os.environ.get("BAICHUAN_AUDIO_MODEL", DEFAULT_MODEL)]
    if os.environ.get("BAICHUAN_AUDIO_VOCODER"):
        argv += ["--vocoder", os.environ["BAICHUAN_AUDIO_VOCODER"]]
    sys.exit(main(argv + sys.argv[1:]))
