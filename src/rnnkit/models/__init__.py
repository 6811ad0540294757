"""Task models built from rnnkit layers.

Each model lives in its own module; this package only re-exports them (add a line per model).
"""

from __future__ import annotations

from .language_model import LanguageModel, LanguageModelConfig

__all__ = ["LanguageModel", "LanguageModelConfig"]
