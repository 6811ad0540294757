"""The language-model task: train, load, evaluate. The CLI's ``train lm`` and ``evaluate`` call these.

Shapes: ``T`` time (``bptt``), ``B`` streams, ``V`` vocabulary size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .. import engine as engines
from ..data import LMDataConfig, StreamBatches, Vocabulary, eval_streams, load_lm_data, read_text, tokenize
from ..errors import RnnkitError
from ..generate import SamplingConfig, generate
from ..models import LanguageModel, LanguageModelConfig
from .checkpoint import BEST_FILE, CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, load_json, load_weights, save_json
from .config import TrainConfig
from .distributed import barrier, init_distributed
from .runs import new_run_dir, on_main
from .trainer import FitResult, StepOutput, TaskAdapter, Trainer, resolve_device, seed_everything

__all__ = [
    "LanguageModelTask",
    "LMRunConfig",
    "LMResult",
    "train_lm",
    "resume_config",
    "load_lm",
    "evaluate_lm",
    "lm_metrics",
]

LN2 = math.log(2.0)


def lm_metrics(loss: float, level: str) -> dict[str, float]:
    """Perplexity and bits per token (called ``bpc`` at character level) from a mean loss in nats."""
    bits = "bpc" if level == "char" else "bits_per_token"  # per character is per token at char level
    return {"perplexity": math.exp(min(loss, 700.0)), bits: loss / LN2}


class LanguageModelTask(TaskAdapter):
    """Next-token cross-entropy over ``(inputs, targets)`` chunks, each ``(T, B)``; stateful.

    The state carried between chunks is what makes truncated BPTT see the whole stream: the
    forward pass continues where the last chunk stopped, the gradient stops at the chunk edge.
    """

    stateful: ClassVar[bool] = True
    state_batch_dim: ClassVar[int] = 1  # states are (L, B, H)
    unit: ClassVar[str] = "tok"

    def __init__(self, level: str) -> None:
        self.level = level

    def step(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        inputs, targets = batch  # each (T, B)
        logits, state = model(inputs, state)  # (T, B, V)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # fp32 softmax under autocast: the loss sums over the vocabulary
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # (T*B, V) vs (T*B,)
        return StepOutput(loss, targets.numel(), state)

    def metrics(self, loss: float) -> dict[str, float]:
        return lm_metrics(loss, self.level)


# Fields that may differ when a run is resumed: budgets and how it is watched, not what it is.
RESUMABLE = {
    "epochs",
    "max_steps",
    "log_every",
    "checkpoint_every",
    "progress",
    "device",
    "precision",
    "tune",
    "engine",
    "sample_length",
    "sample_prime",
    "sample_temperature",
    "out",
    "resume",
}


@dataclass
class LMRunConfig:
    """Everything ``rnnkit train lm`` needs: data, architecture, training, and the closing sample.

    The architecture fields mirror :class:`~rnnkit.models.LanguageModelConfig` (whose
    ``vocab_size`` comes from the data). ``out`` is the run folder (``None``: a fresh
    timestamped folder under ``runs/``).
    """

    data: LMDataConfig = field(default_factory=LMDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cell: str = "lstm"
    hidden_size: int = 256
    layers: int = 1
    embedding_size: int | None = None
    dropout: float = 0.0
    tie_weights: bool = False
    engine: str = "auto"
    out: str | None = None
    resume: bool = False
    sample_length: int = 400
    sample_prime: str = ""
    sample_temperature: float = 0.7

    def __post_init__(self) -> None:
        self.model_config(vocab_size=1)  # validates the architecture now, before any data is read
        SamplingConfig(self.sample_length, self.sample_temperature)

    def model_config(self, vocab_size: int) -> LanguageModelConfig:
        return LanguageModelConfig(
            vocab_size=vocab_size,
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.layers,
            embedding_size=self.embedding_size,
            dropout=self.dropout,
            tie_weights=self.tie_weights,
            engine=self.engine,
        )

    @classmethod
    def field_names(cls) -> set[str]:
        """Every flat option name (data, train and run fields)."""
        own = {f.name for f in fields(cls)} - {"data", "train"}
        return own | {f.name for f in fields(LMDataConfig)} | {f.name for f in fields(TrainConfig)}

    @classmethod
    def from_flat(cls, options: dict[str, Any]) -> LMRunConfig:
        """Build from flat ``{name: value}`` options (flags, config-file keys); unknown names are errors."""
        unknown = sorted(set(options) - cls.field_names())
        if unknown:
            raise RnnkitError(f"unknown option(s) {', '.join(unknown)} for 'train lm'")
        pick = lambda dc: {f.name: options[f.name] for f in fields(dc) if f.name in options}  # noqa: E731
        own = {k: v for k, v in pick(cls).items() if k not in ("data", "train")}
        return cls(data=LMDataConfig(**pick(LMDataConfig)), train=TrainConfig(**pick(TrainConfig)), **own)

    def to_flat(self) -> dict[str, Any]:
        flat = {k: v for k, v in asdict(self).items() if k not in ("data", "train")}
        return {**self.data.to_dict(), **self.train.to_dict(), **flat}


@dataclass
class LMResult:
    """What :func:`train_lm` reports: the run folder, figures on valid/test (best weights), a sample."""

    run_dir: Path
    fit: FitResult
    valid: dict[str, float] | None
    test: dict[str, float] | None
    sample: str
    seconds: float
    summary: str


def resume_config(run_dir: str | Path, overrides: dict[str, Any]) -> LMRunConfig:
    """The saved configuration of ``run_dir`` with ``overrides`` applied; only budgets may change.

    Raises :class:`RnnkitError` when an override would change what the run is (its data, model or
    optimisation), since the checkpoint could not continue it faithfully.
    """
    run_dir = Path(run_dir)
    if not (run_dir / STATE_FILE).is_file():
        raise RnnkitError(
            f"{run_dir}: no checkpoint to resume ({STATE_FILE} is missing); train without --resume"
        )
    saved = load_json(run_dir / CONFIG_FILE)
    if saved.get("task") != "lm" or "options" not in saved:
        raise RnnkitError(f"{run_dir / CONFIG_FILE}: not a language-model run")
    options = dict(saved["options"])
    for key, value in overrides.items():
        if key in RESUMABLE or key not in options:
            options[key] = value
        elif options[key] != value:
            flag = "--" + key.replace("_", "-")
            raise RnnkitError(
                f"cannot resume {run_dir}: {flag} {value!r} differs from the run's {options[key]!r}; "
                f"drop {flag} (only budgets such as --epochs and --max-steps may change) or start a new run"
            )
    options["resume"] = True
    options["out"] = str(run_dir)
    return LMRunConfig.from_flat(options)


def _run_dir(out: str | None, resume: bool) -> Path:
    """``out`` when resuming, else a new run folder (:func:`new_run_dir`); named on rank 0 only."""
    if resume:
        if out is None:
            raise RnnkitError("--resume needs --out RUN_DIR, the run folder to continue")
        return Path(out)  # the Trainer checks that it holds a checkpoint
    return on_main(lambda: new_run_dir(out, "lm"))


def _pick_weights(run_dir: Path) -> Path:
    best = run_dir / BEST_FILE
    return best if best.is_file() else run_dir / WEIGHTS_FILE


def train_lm(config: LMRunConfig, echo: Callable[[str], None] | None = None) -> LMResult:
    """Train a language model as ``config`` says and return its figures and a sample.

    Works unchanged under ``torchrun`` (each rank reads its own ``B / world_size`` streams; only
    rank 0 writes and prints). Files land in the run folder (see :mod:`rnnkit.training.checkpoint`).
    """
    started = time.perf_counter()
    engines.check(config.engine, resolve_device(config.train.device))
    info = init_distributed()
    echo = echo or print
    say = echo if info.is_main else (lambda line: None)
    run_dir = _run_dir(config.out, config.resume)

    vocab = None
    if config.resume:
        saved = load_json(run_dir / CONFIG_FILE)
        vocab = Vocabulary.from_dict(saved["vocab"])
    seed_everything(config.train.seed)
    data = load_lm_data(config.data, vocab)
    model = LanguageModel(config.model_config(len(data.vocab)))
    train_batches = StreamBatches(
        data.train, config.data.batch_size, config.data.bptt, info.rank, info.world_size
    )
    valid_batches = eval_streams(data.valid, config.data.batch_size, config.data.bptt)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            save_json(run_dir / CONFIG_FILE, _config_json(config, model.config, data.vocab, data.source))
    barrier(info)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"data   {data.summary()}")
    say(
        f"model  {config.cell.upper()} {config.layers}x{config.hidden_size}, {n_params:,} parameters; "
        f"{len(train_batches)} steps per epoch of {config.data.batch_size}x{config.data.bptt} tokens"
    )
    say(f"run    {run_dir}" + ("  (resuming)" if config.resume else ""))

    trainer = Trainer(
        model,
        LanguageModelTask(data.vocab.level),
        train_batches,
        valid_batches,
        config.train,
        run_dir=run_dir,
        dist=info,
        echo=say,
    )
    fit = trainer.fit(resume=config.resume)

    # Report on the best weights (what generate/evaluate will load), on every rank alike.
    best = _pick_weights(run_dir)
    if best.is_file():
        load_weights(best, trainer.module)
    valid = trainer.evaluate(valid_batches) if valid_batches is not None else None
    test_batches = eval_streams(data.test, config.data.batch_size, config.data.bptt)
    test = trainer.evaluate(test_batches) if test_batches is not None else None

    sample = ""
    if info.is_main:
        sampling = SamplingConfig(config.sample_length, config.sample_temperature, seed=config.train.seed)
        sample = config.sample_prime + "".join(
            generate(trainer.module, data.vocab, config.sample_prime, sampling)
        )
        (run_dir / "sample.txt").write_text(sample + "\n", encoding="utf-8")
        metrics = {
            "steps": fit.steps,
            "epochs": fit.epochs,
            "stopped": fit.stopped,
            "train_seconds": fit.seconds,
            "valid": valid,
            "test": test,
        }
        save_json(run_dir / "metrics.json", metrics)
    seconds = time.perf_counter() - started
    summary = _summary(valid, test, data.vocab.level)
    return LMResult(run_dir, fit, valid, test, sample, seconds, summary)


def _summary(valid: dict[str, float] | None, test: dict[str, float] | None, level: str) -> str:
    parts = []
    for name, m in (("valid", valid), ("test", test)):
        if m:
            unit = f"bpc {m['bpc']:.3f}" if level == "char" else f"bits/word {m['bits_per_token']:.2f}"
            parts.append(f"{name} loss {m['loss']:.4f}  ppl {m['perplexity']:.2f}  {unit}")
    return "   ".join(parts)


def _config_json(
    config: LMRunConfig, model: LanguageModelConfig, vocab: Vocabulary, source: str
) -> dict[str, Any]:
    return {
        "format": 1,
        "task": "lm",
        "rnnkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model": model.to_dict(),
        "data": config.data.to_dict(),
        "train": config.train.to_dict(),
        "options": config.to_flat(),
        "vocab": vocab.to_dict(),
    }


def load_lm(
    run_dir: str | Path, device: str = "cpu", engine: str | None = None
) -> tuple[LanguageModel, Vocabulary, dict[str, Any]]:
    """The trained model of ``run_dir`` (best weights when saved), its vocabulary and saved config.

    ``engine`` picks the layers' engine (default: the one the run was trained with, or ``auto``
    where that one cannot run on ``device``: a run trained with ``triton`` on a GPU loads on the CPU).

    Raises :class:`RnnkitError` for a missing or corrupt run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RnnkitError(f"{run_dir}: no such run folder; pass the --out folder of 'rnnkit train lm'")
    saved = load_json(run_dir / CONFIG_FILE)
    if saved.get("task") != "lm":
        raise RnnkitError(f"{run_dir}: not a language-model run (task {saved.get('task')!r})")
    try:
        model_config = LanguageModelConfig(**{**saved["model"], **({"engine": engine} if engine else {})})
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir / CONFIG_FILE}: corrupt model config ({err})") from None
    vocab = Vocabulary.from_dict(saved.get("vocab", {}))
    if len(vocab) != model_config.vocab_size:
        raise RnnkitError(f"{run_dir / CONFIG_FILE}: corrupt: vocabulary and model disagree in size")
    where = resolve_device(device)
    if engine is None:
        try:
            engines.check(model_config.engine, where)
        except RnnkitError:
            model_config.engine = "auto"
    model = LanguageModel(model_config)
    load_weights(_pick_weights(run_dir), model)
    model.to(where)
    model.eval()
    return model, vocab, saved


@torch.no_grad()
def evaluate_lm(
    run_dir: str | Path, text: str | Path, device: str = "cpu", bptt: int = 256
) -> dict[str, float]:
    """Loss, perplexity and bits per token (and per character) of ``run_dir``'s model on ``text``.

    The text is read as one stream (batch 1) in chunks of ``bptt`` with the state carried across,
    so every prediction sees all the text before it. Unknown words count as ``<unk>``; unknown
    characters are an error.
    """
    model, vocab, _ = load_lm(run_dir, device)
    content = read_text(text)
    tokens = tokenize(content, vocab.level)
    ids = torch.tensor(vocab.encode(tokens, what=str(text)), dtype=torch.long)
    if ids.numel() < 2:
        raise RnnkitError(f"{text}: needs at least 2 tokens to score a prediction")
    task = LanguageModelTask(vocab.level)
    dev = next(model.parameters()).device
    total, count, state = 0.0, 0, None
    for inputs, targets in StreamBatches(ids, 1, bptt):
        out = task.step(model, (inputs.to(dev), targets.to(dev)), state)
        total += float(out.loss) * out.count
        count += out.count
        state = out.state
    loss = total / count
    result = {"loss": loss, **lm_metrics(loss, vocab.level), "tokens": count}
    if vocab.level == "word":
        # Bits per character of the text too, so word and character models can be compared.
        result["bpc"] = loss * count / LN2 / max(1, len(content))
    return result
