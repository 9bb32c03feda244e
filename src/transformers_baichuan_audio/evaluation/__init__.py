"""Evaluation in one command (``baichuan-audio eval``): ASR WER/CER, spoken QA, speech-text consistency, latency."""
