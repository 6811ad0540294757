"""Run folders for the task commands: options, resuming, batching, and the Trainer call.

What ``rnnkit train classify|translate|generate-from|forecast`` share as a library: a new or
resumed run folder from the options (:func:`start_run`), padded mini-batches
(:class:`Batches`), a stateless loss adapter (:class:`LossTask`), the Trainer call with the
best weights reloaded (:func:`fit`), and reading a run back (:func:`read_run`,
:func:`load_best`). The training loop itself is :class:`rnnkit.training.Trainer`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from .. import engine as engines
from ..errors import RnnkitError
from ..layers import set_engine
from . import StepOutput, TaskAdapter, TrainConfig, Trainer, resolve_device, seed_everything
from .checkpoint import (
    BEST_FILE,
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    load_json,
    load_weights,
    save_json,
)
from .distributed import barrier, broadcast_object, init_distributed
from .trainer import tree_map

__all__ = [
    "say",
    "on_main",
    "pad",
    "Batches",
    "LossTask",
    "split_indices",
    "pick_level",
    "RESUMABLE",
    "TRAINER_FLAGS",
    "train_config",
    "new_run_dir",
    "start_run",
    "write_run_config",
    "read_run",
    "load_best",
    "to_model",
    "Fitted",
    "fit",
]


def say(line: str) -> None:
    """Print ``line`` on rank 0 only (every process under ``torchrun`` runs the same command)."""
    if init_distributed().is_main:
        print(line)


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 and its result on every rank; an :class:`RnnkitError` it raises is
    raised on every rank (no rank is left waiting). Just ``fn()`` in a single process."""
    info = init_distributed()
    result = error = None
    if info.is_main:
        try:
            result = fn()
        except RnnkitError as err:
            error = str(err)
    result, error = broadcast_object((result, error), info)
    if error is not None:
        raise RnnkitError(error)
    return result


def pad(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists. Returns ids ``(B, T_max)`` and lengths ``(B,)``."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


class Batches:
    """Re-iterable mini-batches of ``items`` made by ``collate``; reshuffled per epoch when ``shuffle``.

    The order depends only on ``seed`` and the epoch, so a run is repeatable. Under DDP
    (:meth:`shard`) ``batch_size`` is the global batch: each rank collates its own share of every
    batch (shares differ by at most one item), and a last batch with fewer items than ranks is
    skipped on every rank alike.
    """

    def __init__(
        self,
        items: Sequence,
        batch_size: int,
        collate: Callable[[list], Any],
        *,
        shuffle: bool,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise RnnkitError(f"--batch-size must be a positive integer, got {batch_size}")
        self.items, self.batch_size, self.collate = list(items), batch_size, collate
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> Batches:
        """Yield only rank ``rank``'s share of each batch, of ``world_size`` ranks; returns self."""
        if world_size > self.batch_size:
            raise RnnkitError(
                f"--batch-size {self.batch_size} is the global batch and must be at least the number of "
                f"processes ({world_size})"
            )
        self.rank, self.world_size = rank, world_size
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, last = divmod(len(self.items), self.batch_size)
        return full + (0 < last and last >= self.world_size)

    def __iter__(self):
        order = list(range(len(self.items)))
        if self.shuffle:
            random.Random(self.seed * 7919 + self.epoch).shuffle(order)
        for i in range(0, len(order), self.batch_size):
            chunk = order[i : i + self.batch_size]
            if self.world_size > 1:
                if len(chunk) < self.world_size:
                    continue  # too few to share: skipped on every rank
                per, extra = divmod(len(chunk), self.world_size)
                start = self.rank * per + min(self.rank, extra)
                chunk = chunk[start : start + per + (self.rank < extra)]
            yield self.collate([self.items[j] for j in chunk])


class LossTask(TaskAdapter):
    """A stateless task: ``loss_fn(model, batch) -> (mean loss, count)``; perplexity if ``per_token``."""

    def __init__(self, loss_fn: Callable[[nn.Module, Any], tuple[Tensor, int]], unit: str, per_token: bool):
        self.loss_fn, self.per_token = loss_fn, per_token
        self.unit = unit  # type: ignore[misc]

    def step(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        loss, count = self.loss_fn(model, batch)
        return StepOutput(loss, count)

    def metrics(self, loss: float) -> dict[str, float]:
        import math

        return {"perplexity": math.exp(min(loss, 700.0))} if self.per_token else {}


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Shuffle ``range(n)`` with ``seed`` and cut off the given fractions (the rest comes first)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    sizes = [max(1, round(f * n)) for f in fractions]
    start = n - sum(sizes)
    if start < 1:
        raise RnnkitError(f"only {n} examples: too few to hold out validation and test data")
    parts = [order[:start]]
    for size in sizes:
        parts.append(order[start : start + size])
        start += size
    return parts


def pick_level(level: str, texts: Sequence[str]) -> str:
    """``auto``: words when the texts average more than three words, else characters."""
    if level == "auto":
        words = sum(len(t.split()) for t in texts[:2000]) / max(1, min(len(texts), 2000))
        return "word" if words > 3 else "char"
    if level not in ("char", "word"):
        raise RnnkitError(f"--level must be auto, char or word, got {level!r}")
    return level


#: Options a resumed run may change: budgets, display, and where and how it runs (device,
#: precision, engine, tuning). Anything else would change what the checkpoint is a checkpoint of.
RESUMABLE = frozenset(
    {"epochs", "max_steps", "early_stopping", "progress", "as_json", "resume", "out"}
    | {"engine", "device", "precision", "tune"}
)


#: The flags every task command hands to the Trainer, by their TrainConfig field names.
TRAINER_FLAGS = (
    "epochs",
    "max_steps",
    "lr",
    "clip",
    "schedule",
    "early_stopping",
    "seed",
    "progress",
    "device",
    "precision",
    "tune",
)


def train_config(options: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The Trainer options among ``options`` (the :data:`TRAINER_FLAGS`), then ``overrides``."""
    chosen = {k: options[k] for k in TRAINER_FLAGS if k in options} | overrides
    return TrainConfig(**{k: v for k, v in chosen.items() if v is not None})


def new_run_dir(out: Path | None, task: str) -> Path:
    """``out``, or ``runs/<task>-<timestamp>``; refuses a folder that already holds a run."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path, n = Path("runs") / f"{task}-{stamp}", 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{task}-{stamp}-{n}"
        return path
    path = Path(out)
    if (path / STATE_FILE).exists() or (path / CONFIG_FILE).exists():
        raise RnnkitError(
            f"{path} already holds a run; pass --resume to continue it or choose another --out "
            "(nothing was changed)"
        )
    return path


def start_run(
    task: str, options: dict[str, Any], given: set[str] | None = None
) -> tuple[dict[str, Any], Path, bool]:
    """The options and run folder of a task command, and whether it resumes.

    Without ``--resume``: ``options`` as given and a new run folder (:func:`new_run_dir`). With
    it: the options saved in ``--out``'s ``config.json``, overridden by the options set now
    (``given``: the names the user set; by default every one in ``options``), which may only change
    budgets and display (:data:`RESUMABLE`); the Trainer then continues from the run's last
    checkpoint.
    Seeds every random number generator from ``--seed`` first, so the model's initial weights
    (built before the Trainer starts) are the same in every run with the same seed. Under
    ``torchrun`` rank 0 names a new run folder and every rank gets it.
    """
    if not options.get("resume"):
        engines.check(options.get("engine", "auto"), resolve_device(options.get("device", "auto")))
        seed_everything(options.get("seed", 0))
        return options, on_main(lambda: new_run_dir(options.get("out"), task)), False
    if options.get("out") is None:
        raise RnnkitError("--resume needs --out RUN_DIR, the run folder to continue")
    run_dir = Path(options["out"])
    saved = read_run(run_dir, task)
    if not (run_dir / STATE_FILE).is_file():
        raise RnnkitError(
            f"{run_dir}: no checkpoint to resume ({STATE_FILE} is missing); train without --resume"
        )
    if "options" not in saved:
        raise RnnkitError(f"{run_dir}: written by an rnnkit that saved no options; it cannot be resumed")
    merged = {
        k: Path(v) if k in saved.get("path_options", ()) and v is not None else v
        for k, v in saved["options"].items()
    }
    if given is None:
        given = set(options)
    for key, value in options.items():
        if key not in given or key in RESUMABLE or key == "config":
            continue
        if _plain(value) != _plain(merged.get(key)):
            flag = "--" + key.replace("_", "-")
            raise RnnkitError(
                f"cannot resume {run_dir}: {flag} {_plain(value)!r} differs from the run's "
                f"{_plain(merged.get(key))!r}; drop {flag} (only budgets such as --epochs and "
                "--max-steps may change) or start a new run"
            )
    merged.update({k: v for k, v in options.items() if k in RESUMABLE and k in given})
    merged.update(resume=True, out=run_dir)
    engines.check(merged.get("engine", "auto"), resolve_device(merged.get("device", "auto")))
    seed_everything(merged.get("seed", 0))
    return merged, run_dir, True


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def write_run_config(
    run_dir: Path, task: str, model_config: dict, extra: dict[str, Any], options: dict[str, Any] | None = None
) -> None:
    """``config.json`` of a new run: the model, the task's ``extra`` and, for ``--resume``, the
    command's ``options`` (paths as strings, named in ``path_options``). Rank 0 writes it."""
    info = init_distributed()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved: dict[str, Any] = {}
        if options is not None:
            saved["options"] = {k: _plain(v) for k, v in options.items()}
            saved["path_options"] = sorted(k for k, v in options.items() if isinstance(v, Path))
        save_json(
            run_dir / CONFIG_FILE,
            {
                "format": 1,
                "task": task,
                "rnnkit_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": model_config,
                **extra,
                **saved,
            },
        )
    barrier(info)


def read_run(run_dir: Path, task: str | tuple[str, ...]) -> dict[str, Any]:
    """The saved ``config.json`` of ``run_dir``, checked to be of ``task``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RnnkitError(f"{run_dir}: no such run folder; pass the --out folder of 'rnnkit train'")
    saved = load_json(run_dir / CONFIG_FILE)
    tasks = (task,) if isinstance(task, str) else task
    if saved.get("task") not in tasks:
        raise RnnkitError(f"{run_dir}: a {saved.get('task')!r} run, expected {' or '.join(tasks)}")
    return saved


def load_best(run_dir: Path, model: nn.Module, device: str = "cpu") -> nn.Module:
    """Load the best validation weights (else the latest) into ``model``, on ``device`` (``cpu``,
    ``cuda``, ``cuda:N`` or ``auto``: CUDA when present); eval mode, engine ``auto``."""
    where = resolve_device(device)
    load_weights(_best_weights(run_dir), model)
    set_engine(model, "auto")
    return model.to(where).eval()


def _best_weights(run_dir: Path) -> Path:
    best = Path(run_dir) / BEST_FILE
    return best if best.is_file() else Path(run_dir) / WEIGHTS_FILE


def to_model(batch: Any, model: nn.Module) -> Any:
    """``batch`` (tensors in nested tuples, lists, dicts) moved to ``model``'s device."""
    device = next(model.parameters()).device
    return tree_map(lambda t: t.to(device), batch)


@dataclass
class Fitted:
    model: nn.Module
    trainer: Trainer
    seconds: float
    steps: int
    stopped: str
    is_main: bool = True  # rank 0 (or a single process): the one that scores and writes the figures


def fit(
    model: nn.Module,
    task: TaskAdapter,
    train: Batches,
    valid: Batches | None,
    config: TrainConfig,
    run_dir: Path,
    echo: Callable[[str], None] = print,
    resume: bool = False,
    engine: str = "auto",
) -> Fitted:
    """Train with the shared :class:`Trainer` (``resume``: from the run's last checkpoint), the
    model's recurrent layers on ``engine``; then reload the best weights. Under ``torchrun`` the
    Trainer wraps the model in DDP and each rank trains on its share of every batch
    (:meth:`Batches.shard`)."""
    info = init_distributed()
    set_engine(model, engine)
    seed_everything(config.seed)
    if info.enabled:
        train.shard(info.rank, info.world_size)
    trainer = Trainer(model, task, train, valid, config, run_dir=run_dir, dist=info, echo=echo)
    result = trainer.fit(resume=resume)
    barrier(info)  # rank 0's last files are written
    model = trainer.module
    load_weights(_best_weights(run_dir), model)
    model.eval()  # the scoring that follows runs where it trained, on the same engine
    return Fitted(model, trainer, result.seconds, result.steps, result.stopped, info.is_main)
