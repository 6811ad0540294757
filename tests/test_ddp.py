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
