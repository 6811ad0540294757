"""DDP: 2 CPU processes on gloo train exactly like one process with the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rnnkit.data import StreamBatches
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.training import DistInfo, TrainConfig, Trainer
from rnnkit.training.lm import LanguageModelTask

B, BPTT, V = 4, 8, 9


def _setup(rank: int, world: int, run_dir):
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(V, hidden_size=8, engine="reference")).double()
    ids = torch.randint(0, V, (B * 33,), generator=torch.Generator().manual_seed(1))
    valid = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(2))
    config = TrainConfig(
        epochs=2, optimizer="adamw", lr=0.01, clip=0.5, progress=False, device="cpu", checkpoint_every=3
    )
    return Trainer(
        model,
        LanguageModelTask("char"),
        StreamBatches(ids, B, BPTT, rank, world),  # each rank its own B / world streams
        StreamBatches(valid, 2, BPTT),
        config,
        run_dir=run_dir,
        dist=DistInfo(rank, world),
        echo=lambda line: None,
    )


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer = _setup(rank, world, run_dir)
        trainer.fit()
        if rank == 0:
            torch.save(
                {"params": trainer.module.state_dict(), "losses": [r["loss"] for r in trainer.history]},
                f"{run_dir}/result.pt",
            )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = _setup(0, 1, tmp_path / "single")
    single.fit()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    result = torch.load(tmp_path / "ddp" / "result.pt", weights_only=True)
    # The logged loss is the mean over ranks, which is the global batch's mean (equal counts).
    assert result["losses"] == pytest.approx([r["loss"] for r in single.history], rel=1e-10)
    for name, value in single.module.state_dict().items():
        torch.testing.assert_close(result["params"][name], value, rtol=1e-9, atol=1e-12, msg=name)
    # Checkpoints gather every rank's carried state: the saved state covers the global batch.
    state = torch.load(tmp_path / "ddp" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == single.step
    assert (tmp_path / "ddp" / "steps.csv").read_text() == (tmp_path / "single" / "steps.csv").read_text()


def _classify_worker(rank: int, world: int, port: int, argv: list[str], seen_dir: str) -> None:
    import rnnkit.training.classify as task
    from rnnkit.cli import main

    seen, loss = [], task._loss

    def counting_loss(model, batch):  # the training examples this rank sees, step by step
        if model.training:
            seen.append(len(batch[2]))
        return loss(model, batch)

    task._loss = counting_loss
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        try:
            main(argv)
        except SystemExit as e:
            assert e.code in (0, None), e.code
    finally:
        dist.destroy_process_group()
    with open(f"{seen_dir}/seen{rank}.txt", "w") as f:
        f.write(" ".join(map(str, seen)))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_task_command_under_two_gloo_processes_matches_one_process(tmp_path, capsys):
    # `rnnkit train classify` under torchrun: DDP, each rank its share of every global batch, one
    # run folder written by rank 0; the weights equal a single process's with the same batch
    from safetensors.torch import load_file

    from rnnkit.cli import main

    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"]}
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(60):
        label = "pos" if i % 2 else "neg"
        picks = torch.randint(0, 3, (4,), generator=g).tolist()
        lines.append(f"{label}\t" + " ".join(words[label][k] for k in picks))
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    argv = ["train", "classify", "--data", str(tmp_path / "train.txt"), "--epochs", "2", "--batch-size", "8"]
    argv += [
        "--hidden-size",
        "8",
        "--embedding-size",
        "8",
        "--engine",
        "reference",
        "--no-progress",
        "--json",
    ]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "single")])
    assert e.value.code == 0
    capsys.readouterr()
    mp.spawn(
        _classify_worker,
        args=(2, _free_port(), [*argv, "--out", str(tmp_path / "ddp")], str(tmp_path)),
        nprocs=2,
        join=True,
    )
    for rank in (0, 1):  # 48 training examples, global batch 8: 4 a step on each rank, 12 steps
        assert (tmp_path / f"seen{rank}.txt").read_text().split() == ["4"] * 12
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    ours, theirs = load_file(ddp / "model.safetensors"), load_file(single / "model.safetensors")
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6, msg=name)
    steps = [line.split(",")[0] for line in (ddp / "steps.csv").read_text().splitlines()]
    assert steps == [line.split(",")[0] for line in (single / "steps.csv").read_text().splitlines()]


@pytest.mark.parametrize("n, expected_len", [(11, 3), (10, 2), (12, 3)])
def test_batches_shard_every_global_batch_over_the_ranks(n, expected_len):
    from rnnkit.errors import RnnkitError
    from rnnkit.training.runs import Batches

    whole = list(Batches(range(n), 4, list, shuffle=True, seed=3))
    shards = [list(Batches(range(n), 4, list, shuffle=True, seed=3).shard(r, 3)) for r in range(3)]
    assert all(
        len(s) == expected_len == len(Batches(range(n), 4, list, shuffle=True).shard(r, 3))
        for r, s in enumerate(shards)
    )
    for k in range(expected_len):  # each batch: the ranks' shares, in rank order, are the batch
        parts = [s[k] for s in shards]
        assert sum(parts, []) == whole[k] and max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(RnnkitError, match="global batch"):
        Batches(range(n), 2, list, shuffle=False).shard(0, 3)
