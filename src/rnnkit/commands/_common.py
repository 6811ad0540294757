"""What the task commands share on the command line: option types, and options read from
flags and ``--config`` files. The library side (run folders, batching, the Trainer call) is
:mod:`rnnkit.training.runs`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import RnnkitError
from ..training.config import read_config_file

__all__ = [
    "MaxStepsOption",
    "LrOption",
    "ClipOption",
    "ScheduleOption",
    "EarlyStoppingOption",
    "SeedOption",
    "ProgressOption",
    "JsonOption",
    "ResumeOption",
    "EngineOption",
    "DeviceOption",
    "InferenceDeviceOption",
    "PrecisionOption",
    "TuneOption",
    "ConfigOption",
    "explicit_flags",
    "command_options",
]


# Options every task's train command shares (each command keeps its own defaults).
MaxStepsOption = Annotated[int | None, typer.Option(help="stop after this many steps in all")]
LrOption = Annotated[float, typer.Option(help="learning rate (AdamW)")]
ClipOption = Annotated[float, typer.Option(help="clip the gradient norm (0: off)")]
ScheduleOption = Annotated[str, typer.Option(help="learning rate: cosine, plateau or constant")]
EarlyStoppingOption = Annotated[int, typer.Option(help="epochs without improvement before stopping (0: off)")]
SeedOption = Annotated[int, typer.Option(help="random seed")]
ProgressOption = Annotated[bool, typer.Option(help="show a progress bar")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the final figures as JSON")]
ResumeOption = Annotated[
    bool, typer.Option(help="continue the run in --out from its last checkpoint (its own options)")
]
EngineOption = Annotated[
    str,
    typer.Option(help="recurrent layers' engine: auto, fused, reference, triton (CUDA) or native (cuDNN)"),
]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda")]
#: ``--device`` of the commands that use a trained run (predict, translate, sample, generate,
#: evaluate): the CPU unless asked, as in PyTorch, since one-at-a-time decoding gains little there.
InferenceDeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA if present)")]
PrecisionOption = Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA), fp32 or bf16")]
TuneOption = Annotated[
    bool,
    typer.Option(help="GPU: time the Triton kernels' plans and cuDNN on first use, keep the fastest"),
]
ConfigOption = Annotated[
    Path | None, typer.Option(help="TOML or YAML file of options; flags given explicitly override it")
]


def explicit_flags(ctx: typer.Context, names: typing.Iterable[str]) -> set[str]:
    """Which of ``names`` the user gave on the command line (not left at their defaults)."""
    given = set()
    for name in names:
        source = ctx.get_parameter_source(name)
        # Compared by name: typer vendors click in recent versions, so the enum's class varies.
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


def command_options(
    ctx: typer.Context, command: Callable, values: dict[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    """A task command's options: its defaults, then ``--config FILE``'s values (checked against
    the command's option types), then the flags given explicitly; and the names the file or a
    flag set. ``values`` are the command's arguments (``locals()``)."""
    options = {k: v for k, v in values.items() if k != "ctx"}
    explicit = explicit_flags(ctx, options)
    given = set(explicit)
    config = options.get("config")
    if config is not None:
        hints = typing.get_type_hints(command)
        for key, value in read_config_file(config).items():
            if key not in options or key == "config":
                raise RnnkitError(f"{config}: unknown option {key!r} for this command (see its --help)")
            given.add(key)
            if key not in explicit:
                options[key] = _typed(value, hints[key], key, config)
    return options, given


def _typed(value: Any, hint: Any, key: str, config: Path) -> Any:
    """``value`` from a config file as the option's type ``hint`` (``X`` or ``X | None``)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if union else [hint]
    if value is None and union:
        return None
    kind = kinds[0]
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (str, Path) and isinstance(value, str):
        return kind(value)
    name = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
    raise RnnkitError(f"{config}: {key} must be {name}, got {value!r}")
