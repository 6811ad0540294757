"""Text data for language models: reading, tokenising, vocabularies, splits and contiguous streams."""

from __future__ import annotations

from .streams import LMData, LMDataConfig, StreamBatches, batchify, eval_streams, load_lm_data
from .text import default_corpus, read_text
from .vocab import EOS, LEVELS, UNK, Vocabulary, tokenize

__all__ = [
    "EOS",
    "LEVELS",
    "UNK",
    "LMData",
    "LMDataConfig",
    "StreamBatches",
    "Vocabulary",
    "batchify",
    "default_corpus",
    "eval_streams",
    "load_lm_data",
    "read_text",
    "tokenize",
]
