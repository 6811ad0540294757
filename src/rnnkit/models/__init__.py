"""Task models built from rnnkit layers.

Each model lives in its own module; this package only re-exports them (add a line per model).
"""

from __future__ import annotations

from .attention import Attention
from .classifier import ClassifierConfig, SequenceClassifier
from .conditional import ConditionalConfig, ConditionalGenerator
from .forecaster import Forecaster, ForecasterConfig
from .language_model import LanguageModel, LanguageModelConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig

__all__ = ["LanguageModel", "LanguageModelConfig"]
__all__ += [
    "Attention",
    "ClassifierConfig",
    "SequenceClassifier",
    "ConditionalConfig",
    "ConditionalGenerator",
]
__all__ += ["Forecaster", "ForecasterConfig", "Seq2Seq", "Seq2SeqConfig"]
