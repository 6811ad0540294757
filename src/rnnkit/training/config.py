"""The Trainer's configuration: budget, optimiser, schedule, clipping, seed, device, logging."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import RnnkitError

__all__ = ["TrainConfig", "read_config_file", "OPTIMIZERS", "SCHEDULES", "DEVICES", "PRECISIONS"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "plateau", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """How to train, independent of the task; checked on construction.

    Args:
        epochs: passes over the training data.
        max_steps: stop after this many optimizer steps in all (``None``: no cap); a resumed run
            counts the steps it already took.
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: base learning rate. weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        schedule: ``"constant"``; ``"plateau"``: divide the rate by ``lr_factor`` when the validation
            loss has not improved for ``lr_patience + 1`` epochs; ``"cosine"``: decay to 0 over the run.
        warmup_steps: linear warm-up from 0 over this many steps (any schedule).
        clip: clip the global gradient norm to this (``0``: no clipping; the norm is recorded anyway).
        early_stopping: stop when validation has not improved for this many epochs (``0``: never).
        seed: seeds Python, NumPy and torch; the same seed gives the same run.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on the CPU), ``"fp32"`` or ``"bf16"``.
        tune: set ``torch.backends.cudnn.benchmark`` for the run, so that the Triton engine times
            its candidate plans on the first call of each kind and keeps the fastest, and
            ``engine="auto"`` times it against cuDNN (GPU only; the CPU engines ignore it).
        log_every: refresh the progress bar every this many steps (every step goes to the CSV).
        checkpoint_every: save a resumable checkpoint every this many steps (``0``: at epoch ends only).
        progress: show a progress bar.
    """

    epochs: int = 5
    max_steps: int | None = None
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "plateau"
    lr_factor: float = 4.0
    lr_patience: int = 0
    warmup_steps: int = 0
    clip: float = 1.0
    early_stopping: int = 3
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    tune: bool = False
    log_every: int = 10
    checkpoint_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps == 0:
            self.max_steps = None
        checks = {
            "epochs": self.epochs >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "log_every": self.log_every >= 1,
            "checkpoint_every": self.checkpoint_every >= 0,
            "lr_patience": self.lr_patience >= 0,
            "warmup_steps": self.warmup_steps >= 0,
            "early_stopping": self.early_stopping >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (value is not None and (not isinstance(value, int) or isinstance(value, bool))):
                raise RnnkitError(f"{_flag(name)} must be a non-negative integer in range, got {value!r}")
        for name, ok in {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "momentum": 0 <= self.momentum < 1,
            "lr_factor": self.lr_factor > 1,
            "clip": self.clip >= 0,
        }.items():
            if not ok:
                want = {"lr_factor": "> 1", "lr": "> 0", "momentum": "in [0, 1)"}.get(name, ">= 0")
                raise RnnkitError(f"{_flag(name)} must be {want}, got {getattr(self, name)!r}")
        for name in ("tune", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise RnnkitError(f"{_flag(name)} must be true or false, got {getattr(self, name)!r}")
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("device", DEVICES),
            ("precision", PRECISIONS),
        ):
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
                raise RnnkitError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flat ``{option: value}`` from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

    Keys are option names with ``-`` or ``_``; tables/sections (e.g. ``[model]``) are flattened,
    so ``hidden-size = 512`` at the top or under any section means the same.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"{path}: config file not found")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        else:
            raise RnnkitError(f"{path}: unknown config format; use a .toml, .yaml or .yml file")
    except RnnkitError:
        raise
    except Exception as err:  # tomllib, yaml and decoding errors share no base class
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RnnkitError(f"{path}: cannot parse the config file ({first})") from None
    if not isinstance(data, dict):
        raise RnnkitError(f"{path}: expected a table of options at the top level")
    flat: dict[str, Any] = {}

    def walk(table: dict[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value)
            else:
                flat[str(key).replace("-", "_")] = value

    walk(data)
    return flat
