"""Many-to-many, unaligned: an encoder-decoder with attention (or the bottleneck baseline).

The encoder reads the source with a bidirectional rnnkit layer whose two directions have ``H/2``
units each, so every encoder state and the concatenated final state have ``H`` features. The
decoder starts from that final state and, at each step, attends over all encoder states:

- ``additive`` (Bahdanau): the query is the previous decoder state; the context joins the
  decoder's input: ``h_t = rnn([e_t; c_t], h_{t-1})``, ``o_t = tanh(W [h_t; c_t])``.
- ``dot`` / ``general`` (Luong): the query is the new state: ``h_t = rnn(e_t, h_{t-1})``,
  ``c_t = attn(h_t)``, ``o_t = tanh(W [h_t; c_t])``.
- ``none``: no attention, ``o_t = h_t``; all the decoder knows of the source is the encoder's
  final state (the "encoding bottleneck").

With ``input_feeding`` the previous ``o_{t-1}`` also joins the input (Luong et al. 2015).
Logits are ``V o_t``. Decoding: greedy, sampling and beam search, all batched.

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``H`` hidden size, ``E`` embedding
size, ``V`` target vocabulary, ``K`` beam size, ``L`` layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention, lengths_to_mask
from .classifier import CELLS, make_recurrent
from .sampling import draw_tokens

__all__ = ["ATTENTIONS", "Seq2SeqConfig", "Seq2Seq", "Memory", "DecoderState"]

ATTENTIONS = ("additive", "dot", "general", "none")

State = Tensor | tuple[Tensor, Tensor]


@dataclass
class Seq2SeqConfig:
    """Configuration of a :class:`Seq2Seq`; ``hidden_size`` must be even (two encoder directions)."""

    src_vocab_size: int
    tgt_vocab_size: int
    embed_size: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    cell: str = "gru"
    attention: str = "additive"
    input_feeding: bool = False
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        name = "Seq2SeqConfig"
        for field in ("src_vocab_size", "tgt_vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive integer, got {value!r}")
        if self.hidden_size % 2:
            raise ValueError(
                f"{name}: hidden_size must be even (H/2 per encoder direction), got {self.hidden_size}"
            )
        if self.cell not in CELLS:
            raise ValueError(f"{name}: unknown cell type {self.cell!r}; expected one of {', '.join(CELLS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"{name}: attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Memory:
    """What the decoder reads of the source: states ``(B, S, H)``, keys pre-projected, mask ``(B, S)``."""

    states: Tensor
    projected: Tensor | None
    mask: Tensor
    final: State  # (L, B, H) (a pair for LSTM)

    def index_select(self, index: Tensor) -> Memory:
        return Memory(
            self.states.index_select(0, index),
            None if self.projected is None else self.projected.index_select(0, index),
            self.mask.index_select(0, index),
            _map_state(self.final, lambda s: s.index_select(1, index)),
        )


@dataclass
class DecoderState:
    """The recurrent state ``(L, B, H)`` (pair for LSTM) and the fed-back output ``(B, H)`` or ``None``."""

    rnn: State
    feed: Tensor | None

    def index_select(self, index: Tensor) -> DecoderState:
        return DecoderState(
            _map_state(self.rnn, lambda s: s.index_select(1, index)),
            None if self.feed is None else self.feed.index_select(0, index),
        )


def _map_state(state: State, fn) -> State:
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _top(state: State) -> Tensor:
    """The last layer's hidden state ``(B, H)``."""
    return (state[0] if isinstance(state, tuple) else state)[-1]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016); 1 when ``alpha`` is 0."""
    return ((5.0 + length) / 6.0) ** alpha


class Seq2Seq(nn.Module):
    """Encoder-decoder with masked attention; see the module docstring for the equations.

    Shapes:
        - src: ``(B, S)`` token ids, ``src_lengths`` ``(B,)``
        - tgt_in: ``(B, T)`` decoder inputs (``<bos> y_1 .. y_{T-1}``)
        - returns logits ``(B, T, V)`` and attention weights ``(B, T, S)`` (``None`` without attention)
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        H, E = c.hidden_size, c.embed_size
        self.src_embedding = nn.Embedding(c.src_vocab_size, E, padding_idx=c.pad_id)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, E, padding_idx=c.pad_id)
        self.encoder = make_recurrent(c.cell, E, H // 2, c.num_layers, bidirectional=True, dropout=c.dropout)
        rnn_input = E + (H if c.attention == "additive" else 0) + (H if c.input_feeding else 0)
        self.decoder = make_recurrent(c.cell, rnn_input, H, c.num_layers, dropout=c.dropout)
        self.attention = None if c.attention == "none" else Attention(H, H, c.attention)
        self.combine = None if c.attention == "none" else nn.Linear(2 * H, H)
        self.dropout = nn.Dropout(c.dropout)
        self.generator = nn.Linear(H, c.tgt_vocab_size)

    # --- building blocks ---------------------------------------------------------------------

    def encode(self, src: Tensor, src_lengths: Tensor) -> Memory:
        """Read the source. Shapes: ``src`` ``(B, S)``, ``src_lengths`` ``(B,)``."""
        B, S = src.shape
        lengths = src_lengths.to("cpu", torch.long)
        states, final = self.encoder(self.dropout(self.src_embedding(src)), lengths=lengths)  # (B, S, H)

        def join(s: Tensor) -> Tensor:
            L = self.config.num_layers
            # (L*2, B, H/2) -> (L, 2, B, H/2) -> (L, B, 2, H/2) -> (L, B, H): directions side by side
            return s.view(L, 2, B, -1).transpose(1, 2).reshape(L, B, -1)

        mask = lengths_to_mask(lengths, S).to(src.device)
        projected = None if self.attention is None else self.attention.project_keys(states)
        return Memory(states, projected, mask, _map_state(final, join))

    def init_state(self, memory: Memory) -> DecoderState:
        B = memory.states.shape[0]
        feed = memory.states.new_zeros(B, self.config.hidden_size) if self.config.input_feeding else None
        return DecoderState(memory.final, feed)

    def _output(self, h: Tensor, memory: Memory, context: Tensor | None) -> Tensor:
        if self.combine is None:
            return h
        return torch.tanh(self.combine(torch.cat([h, context], dim=-1)))

    def step(
        self, tokens: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One decoder step.

        Shapes: ``tokens`` ``(B,)`` -> logits ``(B, V)``, new state, attention ``(B, S)`` or ``None``.
        """
        parts = [self.dropout(self.tgt_embedding(tokens))]  # (B, E)
        context = weights = None
        if self.config.attention == "additive":
            context, weights = self.attention(_top(state.rnn), memory.states, memory.mask, memory.projected)
            parts.append(context)
        if state.feed is not None:
            parts.append(state.feed)
        h, rnn_state = self.decoder(torch.cat(parts, dim=1).unsqueeze(1), state.rnn)  # (B, 1, H)
        h = h.squeeze(1)
        if self.config.attention in ("dot", "general"):
            context, weights = self.attention(h, memory.states, memory.mask, memory.projected)
        out = self._output(h, memory, context)
        logits = self.generator(self.dropout(out))
        return logits, DecoderState(rnn_state, out if self.config.input_feeding else None), weights

    # --- training ----------------------------------------------------------------------------

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, *, feed: str = "gold"
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced (``feed="gold"``) or free-running (``feed="greedy"``) decoder logits.

        Without additive attention and input feeding, the gold-fed decoder has no step-to-step
        dependence outside its recurrence, so it runs as one layer call over all ``T`` steps
        (the engine's fast path) and attends for all steps at once.
        """
        memory = self.encode(src, src_lengths)
        c = self.config
        if feed == "gold" and c.attention != "additive" and not c.input_feeding:
            h, _ = self.decoder(self.dropout(self.tgt_embedding(tgt_in)), memory.final)  # (B, T, H)
            context = weights = None
            if self.attention is not None:
                context, weights = self.attention(h, memory.states, memory.mask, memory.projected)
            return self.generator(self.dropout(self._output(h, memory, context))), weights
        if feed not in ("gold", "greedy"):
            raise ValueError(f"Seq2Seq: feed must be 'gold' or 'greedy', got {feed!r}")
        state = self.init_state(memory)
        tokens = tgt_in[:, 0]
        all_logits, all_weights = [], []
        for t in range(tgt_in.shape[1]):
            logits, state, weights = self.step(tokens, state, memory)
            all_logits.append(logits)
            all_weights.append(weights)
            if t + 1 < tgt_in.shape[1]:
                tokens = tgt_in[:, t + 1] if feed == "gold" else logits.argmax(1)
        stacked = None if all_weights[0] is None else torch.stack(all_weights, 1)  # (B, T, S)
        return torch.stack(all_logits, 1), stacked  # (B, T, V)

    def loss(self, src: Tensor, src_lengths: Tensor, tgt: Tensor, *, feed: str = "gold") -> Tensor:
        """Mean token cross-entropy; ``tgt`` ``(B, T+1)`` is ``<bos> y_1 .. y_T <eos>`` padded."""
        logits, _ = self(src, src_lengths, tgt[:, :-1], feed=feed)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=self.config.pad_id
        )

    # --- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def greedy(
        self, src: Tensor, src_lengths: Tensor, max_len: int = 50
    ) -> tuple[list[list[int]], list[Tensor | None]]:
        """Greedy decoding; returns token ids per example (no ``<eos>``) and attention ``(T_out, S_b)``."""
        return self._decode(src, src_lengths, max_len, lambda logits: logits.argmax(1))

    @torch.no_grad()
    def sample(
        self,
        src: Tensor,
        src_lengths: Tensor,
        max_len: int = 50,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[list[list[int]], list[Tensor | None]]:
        """Ancestral sampling at ``temperature``, optionally from the ``top_k`` most likely tokens."""
        if temperature <= 0:
            raise ValueError(f"sample: temperature must be > 0, got {temperature}")

        def pick(logits: Tensor) -> Tensor:
            return draw_tokens(logits, temperature, top_k, generator)

        return self._decode(src, src_lengths, max_len, pick)

    def _decode(self, src, src_lengths, max_len, pick) -> tuple[list[list[int]], list[Tensor | None]]:
        _check_max_len(max_len)
        c = self.config
        memory = self.encode(src, src_lengths)
        state = self.init_state(memory)
        B = src.shape[0]
        tokens = torch.full((B,), c.bos_id, dtype=torch.long, device=src.device)
        outputs, attns = [], []
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            logits, state, weights = self.step(tokens, state, memory)
            tokens = pick(self._banned(logits))
            outputs.append(tokens)
            attns.append(weights)
            done |= tokens == c.eos_id
            if bool(done.all()):
                break
        ids = torch.stack(outputs, 1).tolist()  # (B, T_out)
        results, maps = [], []
        lengths = src_lengths.tolist()
        for b, seq in enumerate(ids):
            n = seq.index(c.eos_id) if c.eos_id in seq else len(seq)
            results.append(seq[:n])
            if attns[0] is None:
                maps.append(None)
            else:
                # rows for the emitted tokens and the <eos>, columns for the valid source steps
                maps.append(torch.stack([a[b] for a in attns[: n + 1]])[:, : lengths[b]].cpu())
        return results, maps

    @torch.no_grad()
    def beam_search(
        self,
        src: Tensor,
        src_lengths: Tensor,
        beam_size: int = 5,
        max_len: int = 50,
        length_penalty_alpha: float = 0.0,
    ) -> list[list[int]]:
        """Batched beam search; returns the best hypothesis per example (no ``<eos>``).

        At each step the ``2K`` best extensions of the ``K`` live beams are ranked; an ``<eos>``
        among the first ``K`` finishes a hypothesis, and the best ``K`` others live on. An example
        stops once it has ``K`` finished hypotheses; they are ranked by log-probability divided
        by :func:`length_penalty`. With ``K = 1`` this is exactly greedy decoding.
        """
        if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
            raise ValueError(f"beam size must be a positive integer, got {beam_size!r}")
        _check_max_len(max_len)
        c = self.config
        B, K, V = src.shape[0], beam_size, c.tgt_vocab_size
        device = src.device
        expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) example of each beam
        memory = self.encode(src, src_lengths).index_select(expand)
        state = self.init_state(memory)
        scores = torch.zeros(B, K, device=device)
        scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first alive
        tokens = torch.full((B * K,), c.bos_id, dtype=torch.long, device=device)
        history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        n_cand = min(2 * K, K * V)
        for t in range(max_len):
            logits, state, _ = self.step(tokens, state, memory)
            logp = torch.log_softmax(self._banned(logits).float(), dim=1)  # (B*K, V)
            cand = (scores.unsqueeze(2) + logp.view(B, K, V)).view(B, K * V)
            top_scores, top_idx = cand.topk(n_cand, dim=1)  # (B, 2K), best first
            origin, word = top_idx // V, top_idx % V
            is_eos = word == c.eos_id
            for b, r in (is_eos[:, :K]).nonzero().tolist():
                if done[b] or top_scores[b, r] == float("-inf"):
                    continue
                seq = history[b * K + origin[b, r]].tolist()
                finished[b].append(
                    (float(top_scores[b, r]) / length_penalty(t + 1, length_penalty_alpha), seq)
                )
            for b in range(B):
                if not done[b] and len(finished[b]) >= K:
                    done[b] = True
            if all(done):
                break
            # the K best non-<eos> candidates live on (at most K of the 2K are <eos>)
            rank = torch.arange(n_cand, device=device).unsqueeze(0) + is_eos.long() * n_cand
            keep = rank.argsort(dim=1)[:, :K]  # (B, K)
            scores = top_scores.gather(1, keep)
            beam = (origin.gather(1, keep) + torch.arange(B, device=device).unsqueeze(1) * K).view(-1)
            tokens = word.gather(1, keep).view(-1)
            history = torch.cat([history.index_select(0, beam), tokens.unsqueeze(1)], dim=1)
            state = state.index_select(beam)
        best = []
        for b in range(B):
            pool = list(finished[b])
            if len(pool) < K:  # ran out of steps: the live beams compete too
                for k in range(K):
                    s = float(scores[b, k])
                    if s > float("-inf"):
                        pool.append(
                            (
                                s / length_penalty(history.shape[1], length_penalty_alpha),
                                history[b * K + k].tolist(),
                            )
                        )
            best.append(max(pool, key=lambda p: p[0])[1] if pool else [])
        return best

    def _banned(self, logits: Tensor) -> Tensor:
        """Never emit ``<pad>`` or ``<bos>``: they are not words of an output sentence."""
        banned = [self.config.pad_id, self.config.bos_id]
        return logits.index_fill(1, torch.tensor(banned, device=logits.device), float("-inf"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _check_max_len(max_len: int) -> None:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"max length must be a positive integer, got {max_len!r}")
