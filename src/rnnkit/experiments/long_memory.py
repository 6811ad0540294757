"""The long-memory experiment: which cells remember across which lengths, and why.

For every length and cell, a small model (:class:`TaskModel`) is trained on a long-range task
with the same budget and seed; the run records the final metric, the steps it took to clear the
task's bar, the pre-clip gradient norm of every step, the gradient flow ‖∂L/∂h_t‖ before and
after training, and the gate statistics after training. At the longest length it also measures
‖∂h_T/∂h_t‖ against T − t, and (optionally) trains an exploding ReLU RNN with and without clipping to
show the gradient-norm traces side by side. :func:`write_report` turns the result into a
folder: ``table.csv``/``table.md``/``results.json``, PNG plots and a self-contained
``report.html``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import diagnostics as diag
from ..engine import resolve
from ..tasks import TASKS, Task, TaskBatch, make_task
from .model import CELLS, TaskModel, build_model
from .training import FitConfig, FitHistory, fit

#: Gain of the orthogonal recurrent matrix of the clipping demo's ReLU RNN (spectral radius > 1).
EXPLODE_GAIN = 1.3

Progress = Callable[[str], None]


@dataclass
class LongMemoryConfig:
    """Settings of the long-memory experiment; the defaults finish on 2 CPU cores in minutes.

    Args:
        task: ``"recall"``, ``"adding"`` or ``"copy"`` (see :mod:`rnnkit.tasks`).
        cells: cell types to compare.
        lengths: values of the task's sequence-length knob.
        hidden_size: ``H`` of every model.
        seed: seeds the weights, the training batches and the held-out batch of every run.
        eval_size: sequences in the held-out batch.
        probe_size: sequences on which gradient flow, Jacobians and gates are measured.
        clip_demo_steps: steps of the with/without clipping comparison (0 skips it).
        engine: the layers' engine (``"auto"`` takes the fused one where available).
        fit: budget and optimiser of every run.
    """

    task: str = "recall"
    cells: tuple[str, ...] = ("rnn", "lstm", "gru")
    lengths: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
    hidden_size: int = 32
    seed: int = 0
    eval_size: int = 256
    probe_size: int = 32
    clip_demo_steps: int = 300
    engine: str = "auto"
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        self.cells, self.lengths = tuple(self.cells), tuple(self.lengths)
        if self.task not in TASKS:
            raise ValueError(f"LongMemoryConfig: task must be one of {sorted(TASKS)}, got {self.task!r}")
        if not self.cells or any(c not in CELLS for c in self.cells):
            raise ValueError(
                f"LongMemoryConfig: cells must be a non-empty subset of {sorted(CELLS)}, "
                f"got {list(self.cells)}"
            )
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"LongMemoryConfig: lengths must be positive integers, got {list(self.lengths)}")
        for name in ("hidden_size", "eval_size", "probe_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LongMemoryConfig: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.clip_demo_steps, int) or self.clip_demo_steps < 0:
            raise ValueError(f"LongMemoryConfig: clip_demo_steps must be >= 0, got {self.clip_demo_steps!r}")
        if self.engine not in ("auto", "fused", "reference", "native"):
            raise ValueError(
                f"LongMemoryConfig: engine must be auto, fused, reference or native, got {self.engine!r}"
            )
        for n in self.lengths:
            make_task(self.task, n)  # a length the task cannot take fails here, before any training


@dataclass
class RunResult:
    """One cell trained at one length; curves are plain lists so the result is JSON-ready."""

    cell: str
    length: int
    engine: str
    history: FitHistory
    grad_flow_init: list[float]
    grad_flow_trained: list[float]
    gates: dict[str, dict[str, float]]

    @property
    def solved(self) -> bool:
        return self.history.solved_at is not None


@dataclass
class LongMemoryResult:
    """Everything the experiment measured; see :func:`write_report`."""

    config: LongMemoryConfig
    metric_name: str
    higher_is_better: bool
    solved_at: float
    chance: float
    runs: list[RunResult]
    jacobians: dict[str, dict[str, list[float]]]  # "init"/"trained" -> cell -> curve by lag
    gate_stats: dict[str, list[diag.LayerGateStats]]  # cell -> stats at the longest length
    clip_demo: dict[str, FitHistory]  # "clip=…"/"no clipping" -> history
    example: str
    seconds: float = 0.0
    machine: dict[str, object] = field(default_factory=dict)

    def run(self, cell: str, length: int) -> RunResult:
        return next(r for r in self.runs if r.cell == cell and r.length == length)

    def first_failure(self, cell: str) -> int | None:
        """The shortest length at which ``cell`` did not solve the task (None: solved all)."""
        failed = [r.length for r in self.runs if r.cell == cell and not r.solved]
        return min(failed) if failed else None


def _probe_loss(model: TaskModel, batch: TaskBatch, task: Task) -> torch.Tensor:
    return task.loss(model(batch.inputs, batch.lengths), batch)


def _subset(batch: TaskBatch, n: int) -> TaskBatch:
    return TaskBatch(batch.inputs[:n], batch.targets[:n], batch.lengths[:n])


def _flow_curve(model: TaskModel, probe: TaskBatch, task: Task) -> list[float]:
    flow = diag.gradient_flow(model, probe, lambda m, b: _probe_loss(m, b, task))
    return diag.plots.to_curve(flow.get().curve())


def _jacobian_curve(model: TaskModel, probe: TaskBatch) -> list[float]:
    (entry,) = diag.jacobian_norms(model, _subset(probe, 8), lambda m, b: m(b.inputs, b.lengths))
    return diag.plots.to_curve(entry.curve())


def _gate_summary(stats: list[diag.LayerGateStats]) -> dict[str, dict[str, float]]:
    return {
        name: {"saturation": s.saturation, "low": s.saturated_low, "high": s.saturated_high, "mean": s.mean}
        for entry in stats
        for name, s in entry.gates.items()
    }


def machine_info() -> dict[str, object]:
    """What the timings were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def run_long_memory(config: LongMemoryConfig, progress: Progress | None = None) -> LongMemoryResult:
    """Train every cell at every length; see the module docstring."""
    say = progress or (lambda message: None)
    start = time.perf_counter()
    runs, gate_stats, jacobians = [], {}, {"init": {}, "trained": {}}
    longest = max(config.lengths)
    for length in config.lengths:
        task = make_task(config.task, length)
        eval_batch = task.sample(config.eval_size, torch.Generator().manual_seed(config.seed + 1))
        probe = _subset(eval_batch, config.probe_size)
        for cell in config.cells:
            model = build_model(task, cell, config.hidden_size, config.seed, engine=config.engine)
            weights = model.rnn.layer_weights(0)
            like = weights.weight_ih.new_zeros(1, 1, model.rnn.input_size)  # (T, B, I) as the layer sees it
            engine = resolve(config.engine, cell, like, weights)  # what "auto" picked, for the record
            flow_init = _flow_curve(model, probe, task)
            if length == longest:
                jacobians["init"][cell] = _jacobian_curve(model, probe)
            history = fit(model, task, config.fit, eval_batch, torch.Generator().manual_seed(config.seed))
            flow_trained = _flow_curve(model, probe, task)
            with diag.GateRecorder(model) as recorder, torch.no_grad():
                model.eval()
                model(probe.inputs, probe.lengths)
            if length == longest:
                jacobians["trained"][cell] = _jacobian_curve(model, probe)
                gate_stats[cell] = recorder.stats
            runs.append(
                RunResult(
                    cell, length, engine, history, flow_init, flow_trained, _gate_summary(recorder.stats)
                )
            )
            solved = f"solved at step {history.solved_at}" if history.solved_at else "not solved"
            say(
                f"{cell:>4} T={length:<4} {task.metric_name}={history.final_metric:.3f} {solved} "
                f"({history.steps_run} steps, {history.seconds:.1f}s)"
            )

    clip_demo: dict[str, FitHistory] = {}
    if config.clip_demo_steps and "rnn" in config.cells:
        # PyTorch's default initialisation of a tanh RNN only ever shows vanishing gradients here;
        # a ReLU RNN whose recurrent matrix is orthogonal x EXPLODE_GAIN has a spectral radius
        # above 1, so the pre-clip norm spikes by orders of magnitude and clipping has work to do.
        task = make_task(config.task, min(longest, 100))
        eval_batch = task.sample(config.eval_size, torch.Generator().manual_seed(config.seed + 1))
        clip = config.fit.clip if config.fit.clip > 0 else 1.0
        for label, value in ((f"clip={clip:g}", clip), ("no clipping", 0.0)):
            demo = FitConfig(
                **{
                    **asdict(config.fit),
                    "steps": config.clip_demo_steps,
                    "clip": value,
                    "stop_when_solved": False,
                    "eval_every": config.clip_demo_steps,
                }
            )
            model = build_model(task, "rnn", config.hidden_size, config.seed, engine=config.engine)
            model.rnn.nonlinearity = "relu"
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(config.seed)
                nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=EXPLODE_GAIN)
            clip_demo[label] = fit(model, task, demo, eval_batch, torch.Generator().manual_seed(config.seed))
            say(
                f"clipping demo (relu rnn, W_hh orthogonal x {EXPLODE_GAIN:g}, T={task.length}, {label}): "
                f"max pre-clip norm "
                f"{max(clip_demo[label].grad_norms):.3g}"
            )

    example_task = make_task(config.task, min(config.lengths))
    example_batch = example_task.sample(1, torch.Generator().manual_seed(config.seed))
    describe = getattr(example_task, "describe", None)
    example = describe(example_batch) if describe else repr(example_batch.inputs[0].tolist())
    task = make_task(config.task, longest)
    return LongMemoryResult(
        config,
        task.metric_name,
        task.higher_is_better,
        task.solved_at,
        task.chance,
        runs,
        jacobians,
        gate_stats,
        clip_demo,
        example,
        time.perf_counter() - start,
        machine_info(),
    )


# --- the report folder ----------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def table_rows(result: LongMemoryResult) -> tuple[list[str], list[list[object]]]:
    """The table: one row per length, per cell the final metric and the steps to solve."""
    columns = ["length"]
    for cell in result.config.cells:
        columns += [f"{cell} {result.metric_name}", f"{cell} steps to solve"]
    rows = []
    for length in result.config.lengths:
        row: list[object] = [length]
        for cell in result.config.cells:
            run = result.run(cell, length)
            row += [_fmt(run.history.final_metric), run.history.solved_at or "—"]
        rows.append(row)
    return columns, rows


def summary_lines(result: LongMemoryResult) -> list[str]:
    """One sentence per cell: up to which length it solved the task."""
    lines = []
    for cell in result.config.cells:
        fail = result.first_failure(cell)
        if fail is None:
            lines.append(f"{cell}: solved every length up to {max(result.config.lengths)}")
        else:
            lines.append(f"{cell}: first failed at length {fail}")
    return lines


def write_report(result: LongMemoryResult, out: str | Path, command: str | None = None) -> Path:
    """Write the report folder ``out`` and return the path of its ``report.html``.

    ``command``, if given, is recorded as the way to reproduce the run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    columns, rows = table_rows(result)
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    (out / "table.md").write_text("\n".join(md + [""] + [f"- {s}" for s in summary_lines(result)]) + "\n")

    longest = max(cfg.lengths)
    images: list[tuple[str, Path]] = []
    for cell in cfg.cells:
        curves = {}
        for length in cfg.lengths:
            run = result.run(cell, length)
            curves[f"T={length} init"] = run.grad_flow_init
            curves[f"T={length} trained"] = run.grad_flow_trained
        path = diag.plot_gradient_flow(
            curves,
            out / f"gradient_flow_{cell}.png",
            title=f"{cell}: ‖∂L/∂h_t‖ against t (dashed: at init)",
            paired=True,
        )
        images.append((f"Gradient flow, {cell}, every length, before and after training", path))
    both = {
        f"{c} {k}": getattr(result.run(c, longest), f"grad_flow_{k}")
        for c in cfg.cells
        for k in ("init", "trained")
    }
    images.insert(
        0,
        (
            f"Gradient flow at T={longest}: every cell",
            diag.plot_gradient_flow(
                both,
                out / "gradient_flow_cells.png",
                title=f"‖∂L/∂h_t‖ against t at T={longest} (dashed: at init)",
                paired=True,
            ),
        ),
    )
    jac = {
        f"{c} {k}": result.jacobians[k][c]
        for c in cfg.cells
        for k in ("init", "trained")
        if c in result.jacobians[k]
    }
    images.append(
        (
            f"Jacobian norm ‖∂h_T/∂h_t‖ (spectral) against T − t at T={longest}",
            diag.plot_jacobian_norms(
                jac, out / "jacobian.png", title="‖∂h_T/∂h_t‖ (dashed: at init)", paired=True
            ),
        )
    )
    curves = {}
    x = {}
    for run in result.runs:
        label = f"{run.cell} T={run.length}"
        curves[label] = [m for _, m in run.history.evals]
        x[label] = [s for s, _ in run.history.evals]
    images.insert(
        0,
        (
            "Held-out metric during training",
            diag.plot_curves(
                curves,
                out / "training.png",
                title=f"{cfg.task}: held-out {result.metric_name}",
                xlabel="step",
                ylabel=result.metric_name,
                log_y=cfg.task == "adding",
                x=x,
                hline=result.solved_at,
            ),
        ),
    )
    for cell, stats in result.gate_stats.items():
        images.append(
            (
                f"Gates of the trained {cell} at T={longest}",
                diag.plot_gate_stats(
                    stats, out / f"gates_{cell}.png", title=f"{cell} gates after training, T={longest}"
                ),
            )
        )
    if result.gate_stats:
        images.append(
            (
                f"State magnitudes of the trained models at T={longest}",
                diag.plot_state_magnitudes(
                    [s for stats in result.gate_stats.values() for s in stats], out / "state_magnitude.png"
                ),
            )
        )
    if result.clip_demo:
        traces = {label: h.grad_norms for label, h in result.clip_demo.items()}
        clip = cfg.fit.clip if cfg.fit.clip > 0 else 1.0
        images.append(
            (
                f"ReLU RNN (W_hh orthogonal x {EXPLODE_GAIN:g}) at T={min(longest, 100)}: gradient norm "
                "before clipping, with and without clipping",
                diag.plot_grad_norm_traces(traces, out / "clipping.png", clip=clip),
            )
        )

    payload = {
        "command": command,
        "config": asdict(cfg),
        "metric": result.metric_name,
        "higher_is_better": result.higher_is_better,
        "solved_at": result.solved_at,
        "chance": result.chance,
        "seconds": result.seconds,
        "machine": result.machine,
        "summary": summary_lines(result),
        "runs": [
            {
                "cell": r.cell,
                "length": r.length,
                "engine": r.engine,
                "final_metric": r.history.final_metric,
                "steps_to_solve": r.history.solved_at,
                "steps_run": r.history.steps_run,
                "diverged": r.history.diverged,
                "seconds": r.history.seconds,
                "evals": r.history.evals,
                "grad_norms": r.history.grad_norms,
                "grad_flow_init": r.grad_flow_init,
                "grad_flow_trained": r.grad_flow_trained,
                "gates": r.gates,
            }
            for r in result.runs
        ],
        "jacobians": result.jacobians,
        "clip_demo": {
            k: {"grad_norms": h.grad_norms, "final_metric": h.final_metric}
            for k, h in result.clip_demo.items()
        },
        "example": result.example,
    }
    (out / "results.json").write_text(json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n")

    report = diag.HtmlReport(f"Long-term memory: {', '.join(cfg.cells)} on the {cfg.task} task")
    report.text(
        f"Each cell (hidden size {cfg.hidden_size}) trained for at most {cfg.fit.steps} steps of "
        f"{cfg.fit.batch_size} sequences (Adam, lr {cfg.fit.lr:g}, clip {cfg.fit.clip:g}, seed {cfg.seed}), "
        f"evaluated every {cfg.fit.eval_every} steps on {cfg.eval_size} held-out sequences; solved means "
        f"{result.metric_name} {'≥' if result.higher_is_better else '≤'} {result.solved_at:g} "
        f"(chance: {result.chance:.3g}). Total time {result.seconds:.0f} s on "
        f"{result.machine.get('cpu_count')} CPU(s), torch {result.machine.get('torch')}, engine {cfg.engine}."
    )
    if command:
        report.code(command)
    report.heading("Example sequence")
    report.code(result.example)
    report.heading("Results")
    report.table(columns, rows)
    for line in summary_lines(result):
        report.text(line)
    for caption, path in images:
        report.heading(caption, level=3)
        report.image(path, caption)
    return report.save(out / "report.html")


def _json_ready(value: object) -> object:
    """Paths as strings, tuples as lists, NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
