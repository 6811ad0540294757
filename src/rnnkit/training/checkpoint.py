"""Checkpoint files, each written atomically (a temporary file, then ``os.replace``).

A run folder holds:

- ``config.json``: what the run is (task, model and data config, vocabulary), written at the start;
- ``model.safetensors``: the latest weights, ``best.safetensors``: those with the best validation loss;
- ``trainer_state.pt``: everything ``--resume`` needs in one file (weights, optimizer, schedule,
  RNG states, position in the data, the carried hidden state), so a kill can never leave the
  resume state half old and half new.

A reader never sees a half-written file: a kill during a save leaves the previous version whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import RnnkitError

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "BEST_FILE",
    "STATE_FILE",
    "atomic_write",
    "save_json",
    "load_json",
    "save_weights",
    "load_weights",
    "save_state",
    "load_state",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "trainer_state.pt"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` onto ``path`` in one step (same folder, same filesystem)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_json(path: str | Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"{path}: not found; expected a run folder written by 'rnnkit train'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RnnkitError(f"{path}: corrupt checkpoint config ({err}); retrain or restore the file") from None
    if not isinstance(data, dict):
        raise RnnkitError(f"{path}: corrupt checkpoint config (not a JSON object)")
    return data


def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    # save_model (not save_file) because tied weights share storage, which save_file refuses.
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=metadata))


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``path`` into ``model``; :class:`RnnkitError` if missing, corrupt or of another shape."""
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"{path}: not found; expected a run folder written by 'rnnkit train'")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RnnkitError(
            f"{path}: corrupt or mismatched weights ({first}); retrain or restore the file"
        ) from None
    if missing or unexpected:
        raise RnnkitError(
            f"{path}: the weights do not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); the checkpoint belongs to another configuration"
        )


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"{path}: no checkpoint to resume from; train without --resume first")
    try:
        # weights_only: a checkpoint is data, and loading it must not run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RnnkitError(
            f"{path}: corrupt checkpoint ({first[:200]}); restore it or start a new run"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise RnnkitError(f"{path}: corrupt checkpoint (not a trainer state)")
    return state
