"""Data for the classification, translation, conditional-generation and forecasting tasks."""

from .defaults import dates, names_by_language
from .readers import (
    DataError,
    LabelledSeries,
    LabelledTexts,
    Series,
    read_classification,
    read_pairs,
    read_parallel,
    read_series,
    read_text_lines,
    read_ts,
)
from .vocab import Vocabulary, tokenize

__all__ = [
    "DataError",
    "LabelledSeries",
    "LabelledTexts",
    "Series",
    "Vocabulary",
    "dates",
    "names_by_language",
    "read_classification",
    "read_pairs",
    "read_parallel",
    "read_series",
    "read_text_lines",
    "read_ts",
    "tokenize",
]
