"""A task-agnostic training loop: stateful truncated BPTT, clipping, schedules, checkpoints, DDP.

The Trainer knows nothing about language models. A :class:`TaskAdapter` tells it how to turn one
batch into a loss (and, for stateful tasks, the state to carry into the next batch); the data are
any re-iterable of batches that yields the same batches for the same epoch (``set_epoch(epoch)``
is called before each epoch when the data define it, as with ``DistributedSampler``).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import RnnkitError
from .checkpoint import BEST_FILE, STATE_FILE, WEIGHTS_FILE, load_state, save_state, save_weights
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, gather_along
from .logs import RunLog, plot_losses
from .schedule import LRSchedule

__all__ = [
    "StepOutput",
    "TaskAdapter",
    "LossFunction",
    "Trainer",
    "FitResult",
    "seed_everything",
    "resolve_device",
    "tree_map",
]


@dataclass
class StepOutput:
    """What a task returns for one batch.

    ``loss`` is the mean over ``count`` items (tokens, examples) and is what gets backpropagated;
    ``state`` is the recurrent state to carry into the next batch (stateful tasks only).
    """

    loss: Tensor
    count: int
    state: Any = None


class TaskAdapter:
    """How the Trainer runs one batch of a task. Subclass and implement :meth:`step`.

    Set ``stateful = True`` for truncated BPTT over contiguous streams: the Trainer then passes the
    state returned for batch ``k`` into batch ``k + 1``, detached (so gradients stop at the batch
    boundary, i.e. every ``bptt`` steps), resets it at each epoch start, saves it in checkpoints
    and, under DDP, gathers it along ``state_batch_dim``.
    """

    stateful: ClassVar[bool] = False
    state_batch_dim: ClassVar[int] = 1
    unit: ClassVar[str] = "item"

    def step(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        raise NotImplementedError

    def metrics(self, loss: float) -> dict[str, float]:
        """Figures derived from a mean validation loss (e.g. perplexity)."""
        return {}


class LossFunction(TaskAdapter):
    """Adapter for a plain ``loss_fn(model, batch) -> loss`` (mean over the batch); stateless."""

    def __init__(
        self, loss_fn: Callable[[nn.Module, Any], Tensor], count: Callable[[Any], int] | None = None
    ):
        self.loss_fn = loss_fn
        self.count = count or (lambda batch: 1)

    def step(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        return StepOutput(self.loss_fn(model, batch), self.count(batch))


@dataclass
class FitResult:
    """How a :meth:`Trainer.fit` call ended; ``history`` has one row per step this Trainer ran."""

    steps: int
    epochs: int
    stopped: str
    best_valid_loss: float | None
    last_valid: dict[str, float] | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_history: list[dict[str, float]] = field(default_factory=list)


def tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in nested tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA when present (this rank's GPU under DDP), else the CPU."""
    info = info or DistInfo()
    index = name[5:] if isinstance(name, str) and name.startswith("cuda:") else None
    if name not in ("auto", "cpu", "cuda") and not (index and index.isdigit()):
        raise RnnkitError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RnnkitError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        if name == "cuda":
            return torch.device("cuda", info.local_rank)
        if int(index) >= torch.cuda.device_count():
            raise RnnkitError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train ``model`` on ``train_data`` with ``task``; validate each epoch on ``valid_data``.

    Args:
        model: the module; the Trainer moves it to the device (and wraps it in DDP under torchrun).
        task: a :class:`TaskAdapter`.
        train_data, valid_data: re-iterables of batches (``len()`` gives batches per epoch).
        config: a :class:`TrainConfig`.
        run_dir: where checkpoints, CSV logs and the loss curve go (``None``: nothing is written).
        dist: this process's :class:`DistInfo` (single process by default).
        echo: prints a line (epoch summaries); rank 0 only.

    Each step records the loss, the learning rate and the gradient norm *before* clipping
    (``history`` and ``steps.csv``).
    """

    def __init__(
        self,
        model: nn.Module,
        task: TaskAdapter,
        train_data: Iterable,
        valid_data: Iterable | None = None,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        dist: DistInfo | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.task = task
        self.train_data = train_data
        self.valid_data = valid_data
        self.dist = dist or DistInfo()
        self.device = resolve_device(self.config.device, self.dist)
        self.module = model.to(self.device)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.model = self.module
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.echo = echo or (lambda line: tqdm.write(line, file=sys.stdout))
        cfg = self.config
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = len(train_data)  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise RnnkitError("the training data yields no batches; use more data or a smaller batch")
        total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self.schedule = LRSchedule(
            self.optimizer, cfg.schedule, cfg.lr, total, cfg.warmup_steps, cfg.lr_factor, cfg.lr_patience
        )
        self.step = 0
        self.epoch = 0
        self.batches_done = 0
        self.carried: Any = None
        self.best = math.inf
        self.bad_epochs = 0
        self.epoch_loss = [0.0, 0]  # sum and number of step losses this epoch (for its mean)
        self.history: list[dict[str, float]] = []
        self.epoch_history: list[dict[str, float]] = []
        self._pending_rng: dict[str, Any] | None = None
        self.log = None
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log = RunLog(self.run_dir)

    # --- setup ------------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _to_device(self, batch: Any) -> Any:
        return tree_map(lambda t: t.to(self.device, non_blocking=True), batch)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        """Train until the epochs, ``max_steps`` or early stopping end it; ``resume`` loads the run first.
        With ``config.tune``, ``torch.backends.cudnn.benchmark`` is set while it trains."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = before or self.config.tune
        try:
            return self._fit(resume)
        finally:
            torch.backends.cudnn.benchmark = before

    def _fit(self, resume: bool) -> FitResult:
        cfg = self.config
        if resume:
            self.load_checkpoint()
        started = time.perf_counter()
        stopped = "epochs"
        last_valid = None
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            stopped = "max_steps"
        while stopped == "epochs" and self.epoch < cfg.epochs:
            finished_epoch = self._train_epoch()
            if not finished_epoch:
                stopped = "max_steps"
                self.save_checkpoint()
                break
            last_valid = self._end_epoch()
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                stopped = "early_stopping"
            elif cfg.max_steps is not None and self.step >= cfg.max_steps:
                stopped = "max_steps"
        if self.log is not None:
            plot_losses(self.run_dir)
            self.log.close()
        return FitResult(
            steps=self.step,
            epochs=self.epoch,
            stopped=stopped,
            best_valid_loss=self.best if math.isfinite(self.best) else None,
            last_valid=last_valid,
            seconds=time.perf_counter() - started,
            history=self.history,
            epoch_history=self.epoch_history,
        )

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; returns False when ``max_steps`` cut it short."""
        cfg = self.config
        seed_everything(cfg.seed * 1_000_003 + self.epoch)  # the same data order and dropout on resume
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(self.epoch)
        batches = iter(self.train_data)
        skip = self.batches_done
        if skip:
            batches = islice(batches, skip, None)  # already trained on before the checkpoint
        if self._pending_rng is not None:
            if skip:
                _set_rng_state(self._pending_rng)
            self._pending_rng = None
        state = self.carried if self.task.stateful else None
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=skip,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not (cfg.progress and self.dist.is_main),
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )
        smooth_loss, smooth_rate = None, None
        try:
            for batch in batches:
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    self.carried = state
                    return False
                t0 = time.perf_counter()
                state, row = self._train_step(batch, state)
                rate = row["count"] / max(time.perf_counter() - t0, 1e-9)
                smooth_loss = row["loss"] if smooth_loss is None else 0.9 * smooth_loss + 0.1 * row["loss"]
                smooth_rate = rate if smooth_rate is None else 0.9 * smooth_rate + 0.1 * rate
                self.batches_done += 1
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    bar.set_postfix_str(f"loss {smooth_loss:.3f}, {smooth_rate:,.0f} {self.task.unit}/s")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.carried = state
                    self.save_checkpoint()
        finally:
            bar.close()
        self.carried = None
        return True

    def _train_step(self, batch: Any, state: Any) -> tuple[Any, dict[str, float]]:
        self.model.train()
        lr = self.schedule.apply(self.step)
        batch = self._to_device(batch)
        with self._autocast():
            out = self.task.step(self.model, batch, state)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        # The norm before clipping is what diagnostics want (exploding gradients show up here).
        max_norm = self.config.clip if self.config.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        # Detaching here is the "truncated" in truncated BPTT: the next batch starts from this
        # state's value, but no gradient flows back past the batch boundary.
        state = tree_map(Tensor.detach, out.state) if self.task.stateful else None
        loss, grad = all_reduce_mean([out.loss.item(), float(grad_norm)], self.dist, self.device)
        self.step += 1
        row = {
            "step": self.step,
            "epoch": self.epoch + (self.batches_done + 1) / self.steps_per_epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad,
            "count": out.count * self.dist.world_size,  # the global batch's (ranks take equal shares)
        }
        self.history.append(row)
        self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]
        if self.log is not None:
            self.log.step(row)
        return state, row

    def _end_epoch(self) -> dict[str, float] | None:
        """Validate, update the schedule and early stopping, log, checkpoint."""
        valid = self.evaluate(self.valid_data) if self.valid_data is not None else None
        valid_loss = valid["loss"] if valid else None
        self.schedule.epoch_end(valid_loss)
        loss_sum, n = self.epoch_loss
        row: dict[str, float] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": loss_sum / n if n else math.nan,
            "lr": self.schedule.lr_at(self.step),
        }
        if valid is not None:
            row.update({f"valid_{k}": v for k, v in valid.items()})
            if valid_loss < self.best:
                self.best, self.bad_epochs = valid_loss, 0
                if self.run_dir is not None and self.dist.is_main:
                    save_weights(self.run_dir / BEST_FILE, self.module, {"step": str(self.step)})
            else:
                self.bad_epochs += 1
        self.epoch_history.append(row)
        if self.log is not None:
            self.log.epoch(row)
        if self.dist.is_main:
            parts = [f"epoch {self.epoch + 1}/{self.config.epochs}", f"step {self.step}"]
            parts.append(f"train loss {row['train_loss']:.4f}")
            if valid is not None:
                parts += [f"valid {k} {v:.4f}" for k, v in valid.items()]
            parts.append(f"lr {row['lr']:.2e}")
            self.echo("  ".join(parts))
        self.epoch += 1
        self.batches_done = 0
        self.epoch_loss = [0.0, 0]
        self.save_checkpoint()
        return valid

    @torch.no_grad()
    def evaluate(self, data: Iterable) -> dict[str, float]:
        """Mean loss over ``data`` (weighted by each batch's count) and the task's derived metrics.

        Every rank evaluates the whole of ``data`` on its own copy of the (identical) model, so
        every rank takes the same schedule and early-stopping decisions.
        """
        self.module.eval()
        total, count, state = 0.0, 0, None
        with self._autocast():
            for batch in data:
                out = self.task.step(self.module, self._to_device(batch), state)
                total += float(out.loss) * out.count
                count += out.count
                state = out.state if self.task.stateful else None
        if count == 0:
            raise RnnkitError("the validation data yields no batches")
        loss = total / count
        return {"loss": loss, **self.task.metrics(loss)}

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``trainer_state.pt`` and ``model.safetensors`` (rank 0; every rank must call it)."""
        carried = None
        if self.carried is not None:
            dim = self.task.state_batch_dim
            carried = tree_map(lambda t: gather_along(t, dim, self.dist).cpu(), self.carried)
        if self.run_dir is None or not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": _rng_state(),
            "carried": carried,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "epoch_loss": list(self.epoch_loss),
            "world_size": self.dist.world_size,
        }
        save_state(self.run_dir / STATE_FILE, state)
        save_weights(self.run_dir / WEIGHTS_FILE, self.module, {"step": str(self.step)})

    def load_checkpoint(self) -> None:
        """Restore everything :meth:`save_checkpoint` wrote and drop log rows logged after it."""
        if self.run_dir is None:
            raise RnnkitError("resume needs a run folder")
        path = self.run_dir / STATE_FILE
        state = load_state(path)
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
        except (KeyError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RnnkitError(
                f"{path}: the checkpoint does not fit this model and optimizer ({first[:160]}); "
                "resume with the run's own configuration"
            ) from None
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        self._pending_rng = state["rng"]
        carried = state["carried"]
        if carried is not None:
            dim = self.task.state_batch_dim
            rank, world = self.dist.rank, self.dist.world_size

            def mine(t: Tensor) -> Tensor:
                if t.shape[dim] % world:
                    raise RnnkitError(f"{path}: the saved state does not split over {world} processes")
                per = t.shape[dim] // world
                return t.narrow(dim, rank * per, per).to(self.device)

            carried = tree_map(mine, carried)
        self.carried = carried
        if self.log is not None:
            self.log.truncate(self.step, self.epoch)
