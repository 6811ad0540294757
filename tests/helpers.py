"""Shared test helpers: paired rnnkit / torch.nn layers with copied weights."""

from __future__ import annotations

import torch
from torch import nn

import rnnkit

MODES = ("rnn", "lstm", "gru")

try:  # the fused engine needs Numba for its fast loops; tests cover every engine present
    from rnnkit.engine import fused as _fused  # noqa: F401

    ENGINES = ("reference", "fused", "native")
except ImportError:  # pragma: no cover
    ENGINES = ("reference", "native")


def torch_class(mode: str) -> type[nn.RNNBase]:
    return {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[mode]


def make_pair(mode: str, input_size: int, hidden_size: int, *, dtype=torch.float64, engine="auto", **kw):
    """An rnnkit layer and a torch.nn layer with the same (random) weights."""
    ours = getattr(rnnkit, mode.upper())(input_size, hidden_size, engine=engine, **kw).to(dtype)
    theirs = torch_class(mode)(input_size, hidden_size, **kw).to(dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(-0.6, 0.6)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def random_lengths(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """Lengths in [1, T], unsorted, with T itself present so the padded length is T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[int(torch.randint(0, B, (1,), generator=g))] = T
    return lengths
