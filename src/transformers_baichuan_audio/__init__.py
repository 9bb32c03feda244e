"""Baichuan-Audio for Hugging Face Transformers 5."""
__version__ = "0.1.0.dev0"
