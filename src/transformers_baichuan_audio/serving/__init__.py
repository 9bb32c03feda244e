"""OpenAI-compatible HTTP API for Baichuan-Audio (``baichuan-audio serve``)."""
