"""Language-model benchmark: training and sampling speed against plain PyTorch, and short learning curves.

1. Throughput (tokens/s) of one training step, stateful truncated BPTT: rnnkit's ``LanguageModel``
   through the ``Trainer`` (AdamW, clipping, state carried and detached) against a plain PyTorch
   script of the same model (``torch.nn.Embedding`` -> ``torch.nn.LSTM`` -> ``torch.nn.Linear``,
   same data, same batch, same optimizer and clipping). Warm-up first; repeats alternate between
   the two so that load on the machine hits both alike; medians reported.
2. Sampling speed (ms per token) of one sequence, a token per call, as ``rnnkit generate``
   runs it, against a plain torch.nn loop.
3. Short runs of ``train_lm`` on Penn Treebank (word level) and Tiny Shakespeare (character
   level) from ../shared/data, recording the training-loss curve and the final validation figures.
   These show learning, not converged results (full reproductions are a later job).

Run: ``python benchmarks/bench_lm.py`` (about 5 minutes on 2 idle cores); writes
``benchmarks/results/lm.json`` and ``lm.md``. ``--quick`` shrinks everything for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
from rnnkit.data import LMDataConfig, StreamBatches, load_lm_data
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.training import TrainConfig, Trainer
from rnnkit.training.lm import LanguageModelTask, LMRunConfig, train_lm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rnnkit": rnnkit.__version__,
        "device": "cpu",
    }


class PlainLM(nn.Module):
    """The same model written with torch.nn only: the anchor."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(out), state


def plain_steps(model: PlainLM, batches: list, steps: int, clip: float) -> float:
    """A plain PyTorch truncated-BPTT loop; returns seconds for ``steps`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    state = None
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        state = tuple(s.detach() for s in state)
    return time.perf_counter() - t0


def rnnkit_steps(model: LanguageModel, batches: list, steps: int, clip: float) -> float:
    """The same steps through rnnkit's Trainer (no run folder: nothing written to disk)."""
    config = TrainConfig(epochs=1, max_steps=steps, lr=2e-3, clip=clip, progress=False, device="cpu")
    trainer = Trainer(model, LanguageModelTask("char"), batches[:steps], None, config, echo=lambda s: None)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def throughput(hidden: int, batch: int, bptt: int, steps: int, repeats: int) -> dict:
    data = load_lm_data(LMDataConfig(batch_size=batch, bptt=bptt))  # the default corpus
    V = len(data.vocab)
    batches = list(StreamBatches(data.train, batch, bptt))
    batches = [b for b in batches if b[0].shape[0] == bptt][: steps + 5]
    tokens = steps * batch * bptt
    torch.manual_seed(0)
    ours = LanguageModel(LanguageModelConfig(V, hidden_size=hidden))
    theirs = PlainLM(V, hidden)
    engines = {"rnnkit": [], "torch.nn": []}
    # Warm-up: JIT compilation (fused engine), allocator, thread pools.
    rnnkit_steps(ours, batches, 3, 1.0)
    plain_steps(theirs, batches, 3, 1.0)
    for _ in range(repeats):
        engines["rnnkit"].append(tokens / rnnkit_steps(ours, batches, steps, 1.0))
        engines["torch.nn"].append(tokens / plain_steps(theirs, batches, steps, 1.0))
    med = {k: statistics.median(v) for k, v in engines.items()}
    with torch.no_grad():
        probe = ours.embedding(batches[0][0])  # (T, B, H): what the layer sees
    resolved = rnnkit.engine.resolve("auto", "lstm", probe, ours.rnn.layer_weights(0))
    return {
        "model": f"char LSTM 1x{hidden}, embedding {hidden}, vocabulary {V}",
        "batch": batch,
        "bptt": bptt,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "rnnkit_engine": resolved,
        "tokens_per_s": {k: [round(x) for x in v] for k, v in engines.items()},
        "median_tokens_per_s": {k: round(v) for k, v in med.items()},
        "ratio_rnnkit_over_torch": round(med["rnnkit"] / med["torch.nn"], 3),
    }


def plain_generate(model: PlainLM, prime: list[int], length: int, temperature: float, seed: int) -> list[int]:
    """The same sampling as ``rnnkit.generate.sample_ids`` (temperature, full vocabulary) with
    torch.nn: the prime in one call, then one token per call, state carried."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        logits, state = model(torch.tensor(prime).unsqueeze(1))
        for _ in range(length):
            probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=g))
            out.append(token)
            logits, state = model(torch.tensor([[token]]), state)
    return out


def generation(hidden: int, length: int, repeats: int) -> dict:
    """Sampling speed, one sequence, one token per call (``rnnkit generate``): rnnkit's model
    through ``sample_ids`` against the plain torch.nn loop, alternating, medians."""
    from rnnkit.generate import SamplingConfig, sample_ids

    data = load_lm_data(LMDataConfig())
    V = len(data.vocab)
    torch.manual_seed(0)
    ours = LanguageModel(LanguageModelConfig(V, hidden_size=hidden))
    theirs = PlainLM(V, hidden)
    prime = data.train[:16].tolist()
    config = SamplingConfig(length=length, temperature=0.8, seed=0)
    runs = {
        "rnnkit": lambda: list(sample_ids(ours, prime, config)),
        "torch.nn": lambda: plain_generate(theirs, prime, length, 0.8, 0),
    }
    ms = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            ms[k].append(1e3 * (time.perf_counter() - t0) / length)
    med = {k: statistics.median(v) for k, v in ms.items()}
    return {
        "model": f"char LSTM 1x{hidden}, vocabulary {V}",
        "tokens": length,
        "repeats": repeats,
        "ms_per_token": {k: [round(x, 3) for x in v] for k, v in ms.items()},
        "median_ms_per_token": {k: round(v, 3) for k, v in med.items()},
        "ratio_rnnkit_over_torch": round(med["rnnkit"] / med["torch.nn"], 3),
    }


def curve(name: str, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = LMRunConfig.from_flat(
            {**options, "out": f"{tmp}/run", "progress": False, "sample_length": 200}
        )
        t0 = time.perf_counter()
        result = train_lm(config, echo=lambda s: None)
        seconds = time.perf_counter() - t0
        history = result.fit.history
    every = max(1, len(history) // 40)
    return {
        "name": name,
        "options": {k: v for k, v in options.items()},
        "steps": result.fit.steps,
        "seconds": round(seconds, 1),
        "train_loss_curve": [[r["step"], round(r["loss"], 4)] for r in history[::every]],
        "first_loss": round(history[0]["loss"], 4),
        "last_10_mean_loss": round(sum(r["loss"] for r in history[-10:]) / min(10, len(history)), 4),
        "valid": {k: round(v, 4) for k, v in (result.valid or {}).items()},
        "sample": result.sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", default=str(RESULTS / "lm.json"))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite lm.md from an existing lm.json")
    args = parser.parse_args()
    if args.markdown_only:
        out = Path(args.out)
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
        return
    q = args.quick
    started = time.perf_counter()
    report = {"machine": machine(), "command": "python benchmarks/bench_lm.py" + (" --quick" if q else "")}
    print(json.dumps(report["machine"]), flush=True)
    report["throughput"] = throughput(
        hidden=64 if q else 256, batch=32, bptt=64, steps=3 if q else 10, repeats=2 if q else 5
    )
    print(json.dumps(report["throughput"]), flush=True)
    report["generation"] = generation(hidden=64 if q else 256, length=20 if q else 300, repeats=2 if q else 9)
    print(json.dumps(report["generation"]), flush=True)
    ptb = DATA / "ptb"
    report["curves"] = [
        curve(
            "ptb-word",
            dict(
                text=str(ptb / "ptb.train.txt.gz"),
                valid=str(ptb / "ptb.valid.txt.gz"),
                test_fraction=0.0,
                level="word",
                hidden_size=64 if q else 256,
                batch_size=20,
                bptt=35,
                lr=3e-3,
                max_steps=5 if q else 200,
                checkpoint_every=0,
            ),
        ),
        curve(
            "tinyshakespeare-char",
            dict(
                text=str(DATA / "tinyshakespeare" / "input.txt"),
                valid_fraction=0.1,
                test_fraction=0.0,
                hidden_size=64 if q else 256,
                batch_size=32,
                bptt=64,
                max_steps=5 if q else 300,
                checkpoint_every=0,
            ),
        ),
    ]
    for c in report["curves"]:
        print(c["name"], c["steps"], "steps", c["seconds"], "s", json.dumps(c["valid"]), flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


def markdown(report: dict) -> str:
    m, t = report["machine"], report["throughput"]
    lines = [
        "# Language-model benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; 1-min load average at start {m['load_average_1min_at_start']}.",
        f"Command: `{report['command']}` ({report['total_seconds']} s in all).",
        "",
        "## Training throughput (tokens/s, median of alternating repeats)",
        "",
        f"{t['model']}, batch {t['batch']} x bptt {t['bptt']}, AdamW, clip 1.0, state carried; "
        f"{t['steps_per_repeat']} steps x {t['repeats']} repeats; rnnkit engine `{t['rnnkit_engine']}`.",
        "",
        "| implementation | median tokens/s | all repeats |",
        "|---|---|---|",
    ]
    for k, v in t["median_tokens_per_s"].items():
        lines.append(f"| {k} | {v:,} | {', '.join(f'{x:,}' for x in t['tokens_per_s'][k])} |")
    lines += [
        "",
        f"rnnkit / torch.nn = **{t['ratio_rnnkit_over_torch']}**",
        "",
        "## Short learning curves (not converged)",
        "",
        "| run | steps | seconds | first loss | last-10 mean loss | valid loss | valid ppl | valid bits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["curves"]:
        v = c["valid"]
        bits = v.get("bpc", v.get("bits_per_token"))
        lines.append(
            f"| {c['name']} | {c['steps']} | {c['seconds']} | {c['first_loss']} | {c['last_10_mean_loss']} | "
            f"{v.get('loss')} | {v.get('perplexity')} | {bits} |"
        )
    load, cores = m.get("load_average_1min_at_start"), m.get("cores") or 1
    if load is not None and load > cores:
        lines += [
            "",
            f"**Caveat:** the machine was shared and oversubscribed (load {load:.1f} on {cores} cores). "
            "Oversubscription hurts torch.nn's OpenMP threads (which spin while waiting) far more than "
            "the fused engine, so this ratio overstates rnnkit's lead; rerun on an idle machine before "
            "quoting it. The seconds in the second table are inflated by the same load.",
        ]
    gen = report.get("generation")
    if gen:
        lines += [
            "",
            "## Generation (ms per token, one sequence, one token per call, median of alternating repeats)",
            "",
            f"{gen['model']}; {gen['tokens']} tokens sampled at temperature 0.8 after a 16-token prime, "
            f"x {gen['repeats']} repeats; rnnkit through `rnnkit.generate.sample_ids` (what `rnnkit "
            "generate` runs), torch.nn in a plain loop.",
            "",
            "| implementation | median ms per token | all repeats |",
            "|---|---|---|",
        ]
        for k, v in gen["median_ms_per_token"].items():
            lines.append(f"| {k} | {v} | {', '.join(str(x) for x in gen['ms_per_token'][k])} |")
        lines += ["", f"rnnkit / torch.nn = **{gen['ratio_rnnkit_over_torch']}** (time per token)"]
    lines += ["", "Training-loss curves (step, loss) are in lm.json."]
    for c in report["curves"]:
        lines += ["", f"Sample from {c['name']}:", "", "```", c["sample"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
