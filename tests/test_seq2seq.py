"""Attention and Seq2Seq: masking, weights, teacher forcing vs stepping, beam 1 vs greedy."""

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models.attention import Attention, lengths_to_mask
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig

V_SRC, V_TGT = 15, 17


@pytest.mark.parametrize("score", ["additive", "dot", "general"])
def test_attention_weights_sum_to_one_and_zero_on_padding(score):
    torch.manual_seed(0)
    att = Attention(6, 6, score)
    keys = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 4])
    mask = lengths_to_mask(lengths, 5)
    for query in (torch.randn(3, 6), torch.randn(3, 4, 6)):
        ctx, w = att(query, keys, mask)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        pad = ~mask if w.dim() == 2 else (~mask).unsqueeze(1).expand_as(w)
        assert (w[pad] == 0).all()
        # garbage in the padded keys changes nothing
        noisy = keys.clone()
        noisy[~mask] = 100.0
        ctx2, w2 = att(query, noisy, mask)
        torch.testing.assert_close(w2, w)
        torch.testing.assert_close(ctx2, ctx)


def test_attention_against_formula():
    torch.manual_seed(1)
    att = Attention(4, 6, "additive", attention_size=5)
    q, k = torch.randn(2, 4), torch.randn(2, 3, 6)
    _, w = att(q, k)
    for b in range(2):
        scores = torch.stack(
            [att.v(torch.tanh(att.query_proj(q[b]) + att.key_proj(k[b, s]))).squeeze() for s in range(3)]
        )
        torch.testing.assert_close(w[b], torch.softmax(scores, 0))
    g = Attention(4, 6, "general")
    _, w = g(q, k)
    torch.testing.assert_close(w, torch.softmax(torch.einsum("bq,qk,bsk->bs", q, g.key_proj.weight, k), 1))
    with pytest.raises(ValueError, match="dot scoring needs"):
        Attention(4, 6, "dot")


def _batch():
    torch.manual_seed(3)
    src = torch.randint(4, V_SRC, (4, 6))
    src_len = torch.tensor([6, 2, 4, 5])
    for b, n in enumerate(src_len.tolist()):
        src[b, n:] = 0
    tgt = torch.randint(4, V_TGT, (4, 7))
    tgt[:, 0] = 1
    tgt[1, 4:] = 0
    tgt[1, 3] = 2
    return src, src_len, tgt


CONFIGS = [
    ("additive", False, "gru"),
    ("additive", True, "lstm"),
    ("dot", False, "lstm"),
    ("general", False, "gru"),
    ("general", True, "gru"),
    ("none", False, "lstm"),
    ("none", True, "rnn"),
]


def _model(attention, feeding, cell, layers=2):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(V_SRC, V_TGT, embed_size=8, hidden_size=12, num_layers=layers, cell=cell,
                        attention=attention, input_feeding=feeding)  # fmt: skip
    return Seq2Seq(cfg).eval()


@pytest.mark.parametrize("attention, feeding, cell", CONFIGS)
def test_teacher_forced_loss_equals_step_by_step(attention, feeding, cell):
    model = _model(attention, feeding, cell)
    src, src_len, tgt = _batch()
    logits, weights = model(src, src_len, tgt[:, :-1])
    assert logits.shape == (4, 6, V_TGT)
    assert (weights is None) == (attention == "none")
    # the decoder run by hand, one public step at a time
    memory = model.encode(src, src_len)
    state = model.init_state(memory)
    step_logits = []
    for t in range(tgt.shape[1] - 1):
        out, state, _ = model.step(tgt[:, t], state, memory)
        step_logits.append(out)
    step_logits = torch.stack(step_logits, 1)
    torch.testing.assert_close(logits, step_logits, rtol=1e-5, atol=1e-5)
    loss_steps = F.cross_entropy(step_logits.reshape(-1, V_TGT), tgt[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(model.loss(src, src_len, tgt), loss_steps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention, feeding, cell", CONFIGS)
def test_source_padding_changes_nothing(attention, feeding, cell):
    model = _model(attention, feeding, cell)
    src, src_len, tgt = _batch()
    logits, weights = model(src, src_len, tgt[:, :-1])
    padded = torch.cat([src, torch.randint(4, V_SRC, (4, 3))], dim=1)  # garbage, not even pad ids
    for b, n in enumerate(src_len.tolist()):
        padded[b, n:] = torch.randint(4, V_SRC, (padded.shape[1] - n,))
    logits2, weights2 = model(padded, src_len, tgt[:, :-1])
    torch.testing.assert_close(logits2, logits, rtol=1e-5, atol=1e-5)
    if weights is not None:
        torch.testing.assert_close(weights2[..., :6], weights)
        assert (weights2[..., 6:] == 0).all()
        mask = src_len.view(4, 1, 1) <= torch.arange(weights.shape[-1])
        assert (weights[mask.expand_as(weights)] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))
    # an example decoded alone equals its row in the batch
    one, _ = model(src[2:3, :4], src_len[2:3], tgt[2:3, :-1])
    torch.testing.assert_close(one, logits[2:3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention, feeding, cell", CONFIGS)
def test_beam_size_one_equals_greedy(attention, feeding, cell):
    model = _model(attention, feeding, cell)
    src, src_len, _ = _batch()
    greedy, maps = model.greedy(src, src_len, max_len=9)
    assert model.beam_search(src, src_len, beam_size=1, max_len=9) == greedy
    assert model.beam_search(src, src_len, beam_size=1, max_len=9, length_penalty_alpha=1.0) == greedy
    if attention != "none":
        for b, seq in enumerate(greedy):
            assert maps[b].shape[1] == src_len[b] and maps[b].shape[0] in (len(seq), len(seq) + 1)


def test_greedy_matches_free_running_and_beam_finds_higher_likelihood():
    model = _model("additive", False, "gru", layers=1)
    src, src_len, _ = _batch()
    greedy, _ = model.greedy(src, src_len, max_len=8)
    for b in range(4):
        # the first greedy token is the argmax of the first free-running logits
        logits, _ = model(
            src[b : b + 1, : src_len[b]], src_len[b : b + 1], torch.tensor([[1]]), feed="greedy"
        )
        banned = logits[0, 0].index_fill(0, torch.tensor([0, 1]), float("-inf"))
        first = int(banned.argmax())
        assert (greedy[b][:1] or [2]) == [first]

    def logprob(seqs):
        tgt = [torch.tensor([1] + s + [2]) for s in seqs]
        tgt = torch.nn.utils.rnn.pad_sequence(tgt, batch_first=True)
        logits, _ = model(src, src_len, tgt[:, :-1])
        logits = logits.index_fill(2, torch.tensor([0, 1]), float("-inf"))
        lp = torch.log_softmax(logits, -1).gather(2, tgt[:, 1:].unsqueeze(2)).squeeze(2)
        return (lp * (tgt[:, 1:] != 0)).sum(1)

    beam = model.beam_search(src, src_len, beam_size=6, max_len=8)
    assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


def test_batched_decoding_equals_one_at_a_time():
    model = _model("general", True, "lstm")
    src, src_len, _ = _batch()
    batched = model.beam_search(src, src_len, beam_size=3, max_len=7, length_penalty_alpha=0.6)
    for b in range(4):
        one = model.beam_search(src[b : b + 1, : src_len[b]], src_len[b : b + 1], 3, 7, 0.6)
        assert one == [batched[b]]
    g = torch.Generator().manual_seed(5)
    s1, _ = model.sample(src, src_len, 7, temperature=0.8, top_k=3, generator=g)
    g = torch.Generator().manual_seed(5)
    s2, _ = model.sample(src, src_len, 7, temperature=0.8, top_k=3, generator=g)
    assert s1 == s2
    assert all(0 not in s and 1 not in s for s in s1)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_beam_size_must_be_positive(bad):
    model = _model("dot", False, "gru", layers=1)
    src, src_len, _ = _batch()
    with pytest.raises(ValueError, match="beam size must be a positive integer"):
        model.beam_search(src, src_len, beam_size=bad)


def test_config_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2SeqConfig(5, 5, attention="luong")
    with pytest.raises(ValueError, match="hidden_size must be even"):
        Seq2SeqConfig(5, 5, hidden_size=7)
