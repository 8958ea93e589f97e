"""edged: an on-device vision-language daemon for Qwen3.5 Small models."""

__version__ = "0.1.0"
