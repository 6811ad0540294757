"""ConditionalGenerator: shapes, teacher forcing equals stepping, the condition matters, sampling."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.models.conditional import ConditionalConfig, ConditionalGenerator


def _model(cell="gru", every_step=True, **kw):
    torch.manual_seed(0)
    cfg = ConditionalConfig(
        vocab_size=12, embed_size=6, condition_embed_size=5, hidden_size=8, num_layers=2, cell=cell,
        condition_every_step=every_step, **({"num_conditions": 3} | kw),
    )  # fmt: skip
    return ConditionalGenerator(cfg).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("every_step", [True, False])
def test_teacher_forcing_equals_stepping(cell, every_step):
    model = _model(cell, every_step)
    cond = torch.tensor([0, 2, 1])
    tokens = torch.randint(3, 12, (3, 7))
    tokens[:, 0] = 1
    logits = model(cond, tokens[:, :-1])
    assert logits.shape == (3, 6, 12)
    z = model.encode_condition(cond)
    state = model.init_state(z)
    steps = []
    for t in range(6):
        out, state = model.step(tokens[:, t], state, z)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, rtol=1e-5, atol=1e-5)
    loss = F.cross_entropy(torch.stack(steps, 1).reshape(-1, 12), tokens[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(model.loss(cond, tokens), loss, rtol=1e-5, atol=1e-6)


def test_condition_changes_the_output_and_init_state_shape():
    model = _model("lstm", every_step=False)
    tokens = torch.full((2, 4), 5)
    logits = model(torch.tensor([0, 1]), tokens)
    assert not torch.allclose(logits[0], logits[1])
    h, c = model.init_state(model.encode_condition(torch.tensor([0, 1])))
    assert h.shape == c.shape == (2, 2, 8)


def test_generation_is_reproducible_and_greedy_follows_argmax():
    model = _model()
    cond = torch.tensor([0, 1, 2, 0])
    a = model.generate(cond, 9, generator=torch.Generator().manual_seed(3))
    b = model.generate(cond, 9, generator=torch.Generator().manual_seed(3))
    assert a == b and all(len(s) <= 9 and 0 not in s and 1 not in s for s in a)
    greedy = model.generate(cond[:1], 6, greedy=True)[0]
    z = model.encode_condition(cond[:1])
    state, token, manual = model.init_state(z), torch.tensor([1]), []
    for _ in range(6):
        logits, state = model.step(token, state, z)
        token = logits.index_fill(1, torch.tensor([0, 1]), float("-inf")).argmax(1)
        if int(token) == 2:
            break
        manual.append(int(token))
    assert greedy == manual


def test_vector_condition_through_an_encoder():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))  # e.g. a tiny 4x4 "image" encoder
    model = ConditionalGenerator(ConditionalConfig(vocab_size=10, condition_size=4, hidden_size=8), encoder)
    images = torch.randn(2, 4, 4)
    assert model(images, torch.ones(2, 3, dtype=torch.long)).shape == (2, 3, 10)
    assert len(model.generate(images, 5)) == 2


def test_errors():
    with pytest.raises(ValueError, match="exactly one of"):
        ConditionalConfig(vocab_size=5)
    model = _model()
    with pytest.raises(ValueError, match=r"condition labels must be in \[0, 3\)"):
        model.generate(torch.tensor([3]), 4)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.tensor([0]), 4, temperature=0)
