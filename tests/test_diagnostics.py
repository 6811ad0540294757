"""Diagnostics against independent references: hand-unrolled torch.nn cells and autograd."""

from __future__ import annotations

import base64
import re

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import (
    GateRecorder,
    HtmlReport,
    grad_norm,
    gradient_flow,
    jacobian_norms,
    plot_attention,
    plot_gate_stats,
    plot_grad_norm_traces,
    plot_gradient_flow,
    plot_jacobian_norms,
    plot_state_magnitudes,
)

from .helpers import ENGINES, MODES, make_pair, random_lengths

T, B, I, H = 6, 3, 3, 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def torch_cells(theirs: nn.RNNBase, mode: str) -> dict[tuple[int, int], nn.Module]:
    """torch.nn cells holding the weights of each layer and direction of a torch.nn layer."""
    cls = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[mode]
    cells = {}
    for layer in range(theirs.num_layers):
        for d in range(2 if theirs.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = getattr(theirs, "weight_ih" + suffix)
            cell = cls(w_ih.shape[1], theirs.hidden_size).to(w_ih.dtype)
            cell.load_state_dict({k: getattr(theirs, k + suffix) for k in cell.state_dict()})
            cells[(layer, d)] = cell
    return cells


def unroll(cells, mode: str, x: torch.Tensor, layers: int, directions: int):
    """One sequence ``x`` ``(n, I)`` through the stack, step by step; returns the top output
    ``(n, D*H)`` and, per (layer, direction), the list of states in that direction's order."""
    states = {}
    inp = x
    for layer in range(layers):
        outs = []
        for d in range(directions):
            seq = inp if d == 0 else inp.flip(0)
            h = c = x.new_zeros(1, H)
            steps = []
            for t in range(seq.shape[0]):
                if mode == "lstm":
                    h, c = cells[(layer, d)](seq[t : t + 1], (h, c))
                    steps.append((h, c))
                else:
                    h = cells[(layer, d)](seq[t : t + 1], h)
                    steps.append((h,))
            out = torch.cat([s[0] for s in steps])  # (n, H)
            outs.append(out if d == 0 else out.flip(0))
            states[(layer, d)] = steps
        inp = torch.cat(outs, dim=1)  # (n, D*H)
    return inp, states


def loss_of(out: torch.Tensor, v: torch.Tensor, at: str) -> torch.Tensor:
    """A nonlinear loss of one sequence's output ``(n, D*H)``: every step, or the last one only."""
    y = out if at == "every" else out[-1:]
    v = v[: out.shape[0]] if at == "every" else v[:1]
    return (v * y + 0.5 * y**2).sum()


@pytest.mark.parametrize("at", ["last", "every"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_gradient_flow_equals_autograd_on_hand_unrolled_cells(mode, engine, bidirectional, at):
    torch.manual_seed(0)
    D, L = (2 if bidirectional else 1), 2
    ours, theirs = make_pair(mode, I, H, num_layers=L, bidirectional=bidirectional, engine=engine)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(B, T, seed=1)
    v = torch.randn(T, B, D * H, dtype=torch.float64)

    def loss_fn(model, batch):
        xs, lens = batch
        out, _ = model(xs, lengths=lens)  # (T, B, D*H)
        return sum(loss_of(out[: int(lens[b]), b], v[:, b], at) for b in range(B))

    flow = gradient_flow(ours, (x, lengths), loss_fn)

    cells = torch_cells(theirs, mode)
    expected_loss = 0.0
    for b in range(B):
        n = int(lengths[b])
        out, states = unroll(cells, mode, x[:n, b], L, D)
        loss = loss_of(out, v[:, b], at)
        expected_loss += float(loss.detach())
        flat = [s for key in sorted(states) for step in states[key] for s in step]
        grads = iter(torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True))
        for key in sorted(states):
            entry = flow.get(layer=key[0], direction=key[1])
            for step in range(n):
                position = step if key[1] == 0 else n - 1 - step  # reverse states back to input order
                for name in ["h", "c"][: len(states[key][step])]:
                    want = next(grads).norm()
                    got = getattr(entry, name)[position, b]
                    torch.testing.assert_close(got, want, msg=f"{name} layer {key} t={position} b={b}")
            assert (entry.h[n:, b] == 0).all()
    assert flow.loss == pytest.approx(expected_loss, rel=1e-9)
    assert all(p.grad is None for p in ours.parameters()), "gradient_flow must not touch .grad"
    assert "_run_stack" not in vars(ours), "the override must be removed on exit"


def test_gradient_flow_inside_a_model_with_batch_first_and_curve():
    torch.manual_seed(0)
    model = nn.Sequential()  # an rnnkit layer nested in a bigger model, batch-first
    model.rnn = rnnkit.GRU(I, H, batch_first=True)
    model.head = nn.Linear(H, 1)
    x = torch.randn(B, T, I)

    def loss_fn(m, batch):
        out, _ = m.rnn(batch)
        return m.head(out[:, -1]).sum()

    flow = gradient_flow(model, x, loss_fn)
    (entry,) = flow.layers
    assert entry.module == "rnn" and entry.h.shape == (T, B)
    torch.testing.assert_close(entry.curve(), entry.h.mean(dim=1))
    # A loss at the last step reaches early steps only through the recurrence: it must decay
    # from the last step backwards for a contracting random GRU, never vanish entirely.
    assert (entry.h > 0).all()


def test_gradient_flow_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="rnnkit.RNN, LSTM or GRU"):
        gradient_flow(nn.LSTM(I, H), torch.randn(T, B, I), lambda m, x: m(x)[0].sum())
    layer = rnnkit.LSTM(I, H)
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(layer, torch.randn(T, B, I), lambda m, x: m(x)[0])


@pytest.mark.parametrize(
    "mode,state", [("rnn", "h"), ("gru", "h"), ("lstm", "h"), ("lstm", "c"), ("lstm", "full")]
)
@pytest.mark.parametrize("norm", ["spectral", "fro"])
def test_jacobian_norms_equal_autograd_jacobians(mode, state, norm):
    torch.manual_seed(0)
    ours, theirs = make_pair(mode, I, H)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(B, T, seed=2)
    (result,) = jacobian_norms(ours, (x, lengths), lambda m, b: m(b[0], lengths=b[1]), state=state, norm=norm)
    cell = torch_cells(theirs, mode)[(0, 0)]
    ord_ = 2 if norm == "spectral" else "fro"
    for b in range(B):
        n = int(lengths[b])
        _, states = unroll({(0, 0): cell}, mode, x[:n, b], 1, 1)
        zero = x.new_zeros(1, H)
        trajectory = [(zero, zero) if mode == "lstm" else (zero,)] + states[(0, 0)]  # s_{-1} .. s_{n-1}
        for lag in range(n + 1):
            start = n - lag  # index into trajectory of s_{n-1-lag}

            def run(*s0, n=n, lag=lag, b=b):
                s = s0
                for t in range(n - lag, n):
                    s = cell(x[t : t + 1, b], s) if mode == "lstm" else (cell(x[t : t + 1, b], s[0]),)
                    s = s if isinstance(s, tuple) else (s,)
                return torch.cat(s, dim=1).squeeze(0)  # (S,)

            s0 = tuple(s.detach().squeeze(0) for s in trajectory[start])
            jac = torch.autograd.functional.jacobian(lambda *a: run(*(t.unsqueeze(0) for t in a)), s0)
            # (S, S): rows are the final [h; c] (or h), columns the state at the lag.
            full = torch.cat([jac[0], jac[1]], dim=1) if mode == "lstm" else jac[0]
            block = {"h": slice(0, H), "c": slice(H, 2 * H), "full": slice(None)}[state]
            want = torch.linalg.matrix_norm(full[block, block], ord=ord_)
            torch.testing.assert_close(result.norms[lag, b], want, msg=f"b={b} lag={lag}")
        assert result.norms[n + 1 :, b].isnan().all()


def test_jacobian_norms_rejects_bad_options():
    layer = rnnkit.GRU(I, H)
    forward = lambda m, x: m(x)  # noqa: E731
    with pytest.raises(ValueError, match="state='c' needs an LSTM"):
        jacobian_norms(layer, torch.randn(T, B, I), forward, state="c")
    with pytest.raises(ValueError, match="norm must be"):
        jacobian_norms(layer, torch.randn(T, B, I), forward, norm="nuclear")


def _train_step(model, x, lengths):
    out, _ = model(x, lengths=lengths)
    out.square().sum().backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_gate_recorder_changes_no_result(mode, engine):
    # Two layers with dropout in training mode: any extra random draw by the recorder would show.
    torch.manual_seed(0)
    model = getattr(rnnkit, mode.upper())(I, H, num_layers=2, dropout=0.5, engine=engine).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(B, T, seed=3)
    torch.manual_seed(7)
    out_off, grads_off = _train_step(model, x, lengths)
    model.zero_grad()
    torch.manual_seed(7)
    with GateRecorder(model) as recorder:
        out_on, grads_on = _train_step(model, x, lengths)
    assert torch.equal(out_on, out_off)
    assert all(torch.equal(a, b) for a, b in zip(grads_on, grads_off))
    assert len(recorder.stats) == 2 and "_run_stack" not in vars(model)


def _valid_mask(lengths):
    return (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2).expand(T, B, H)  # (T, B, H)


@pytest.mark.parametrize("mode", MODES)
def test_gate_values_rebuild_torch_nn_outputs(mode):
    """Rebuild the states from the recorded gates by the textbook equations and compare them with
    torch.nn's own layer: a swapped or mislabelled gate cannot pass."""
    torch.manual_seed(0)
    ours, theirs = make_pair(mode, I, H)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(B, T, seed=4)
    with GateRecorder(ours, keep_values=True, bins=10, saturation=0.1) as recorder:
        ours(x, lengths=lengths)
    (stats,) = recorder.stats
    g = {name: vals[0] for name, vals in stats.values.items()}  # each (T, B, H)
    want = nn.utils.rnn.pad_packed_sequence(
        theirs(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))[0], total_length=T
    )[0]
    h = c = x.new_zeros(B, H)
    rebuilt, cells = [], []
    for t in range(T):
        if mode == "lstm":
            c = g["forget"][t] * c + g["input"][t] * g["cell"][t]
            h = g["output"][t] * torch.tanh(c)
        elif mode == "gru":
            h = (1 - g["update"][t]) * g["candidate"][t] + g["update"][t] * h
        else:
            h = g["hidden"][t]
        rebuilt.append(h)
        cells.append(c)
    valid = _valid_mask(lengths)
    torch.testing.assert_close(torch.stack(rebuilt)[valid], want[valid])

    # The summaries are the statistics of exactly those values at valid steps.
    for name, summary in stats.gates.items():
        vals = g[name][valid]
        assert summary.total == vals.numel() == int(summary.counts.sum())
        if name in ("cell", "candidate", "hidden"):
            sat = ((vals < -0.9) | (vals > 0.9)).double().mean()
        else:
            sat = ((vals < 0.1) | (vals > 0.9)).double().mean()
        assert summary.saturation == pytest.approx(float(sat))
        per_step = torch.where(valid, g[name], 0).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))
        torch.testing.assert_close(summary.mean_over_time(), per_step)
    h_mag = torch.where(valid, want.abs(), 0).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))
    torch.testing.assert_close(stats.hidden_magnitude, h_mag)
    assert (stats.cell_magnitude is not None) == (mode == "lstm")


def test_gate_recorder_accumulates_calls_of_different_lengths():
    layer = rnnkit.LSTM(I, H)
    with GateRecorder(layer) as recorder:
        layer(torch.randn(T, B, I))
        layer(torch.randn(T + 2, B, I))
    (stats,) = recorder.stats
    assert stats.gates["forget"].total == (2 * T + 2) * B * H
    assert stats.cell_magnitude.shape == (T + 2,)


def test_grad_norm_is_what_clipping_sees():
    layer = rnnkit.RNN(I, H)
    layer(torch.randn(T, B, I))[0].sum().backward()
    measured = grad_norm(layer.parameters())
    assert measured == pytest.approx(float(nn.utils.clip_grad_norm_(layer.parameters(), 1e-3)))


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def test_plots_and_html_report(tmp_path):
    torch.manual_seed(0)
    layer = rnnkit.LSTM(I, H)
    x = torch.randn(T, B, I)
    flow = gradient_flow(layer, x, lambda m, b: m(b)[0][-1].sum())
    jac = jacobian_norms(layer, x, lambda m, b: m(b))
    with GateRecorder(layer) as recorder:
        layer(x)
    paths = [
        plot_gradient_flow(
            {"x h": flow.layers[0].curve(), "x c": flow.layers[0].curve("c")}, tmp_path / "g.png", paired=True
        ),
        plot_jacobian_norms({"lstm": jac[0].curve()}, tmp_path / "j.png"),
        plot_gate_stats(recorder.stats, tmp_path / "gates.png"),
        plot_state_magnitudes(recorder.stats, tmp_path / "state.png"),
        plot_grad_norm_traces(
            {"clip": [1.0, 3.0, 0.5], "none": [1.0, 30.0, 2.0]}, tmp_path / "n.png", clip=1.0
        ),
        plot_attention(
            torch.softmax(torch.randn(3, 4), 1), list("abcd"), ["x", "y", "z"], tmp_path / "a.png"
        ),
    ]
    assert all(_is_png(p) for p in paths)

    report = HtmlReport("Diagnostics <test>")
    report.table(["cell", "accuracy"], [["lstm", 1.0]])
    report.image(paths[0], "gradient flow")
    html = report.save(tmp_path / "report.html").read_text()
    assert "Diagnostics &lt;test&gt;" in html and "<td>lstm</td>" in html
    (encoded,) = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert base64.b64decode(encoded) == paths[0].read_bytes()
    assert not re.search(r'src="(?!data:)', html), "the page must not load anything from outside"


def test_plot_attention_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"weights are 2x3 but got 2 target and 2 source tokens"):
        plot_attention(torch.rand(2, 3), ["a", "b"], ["x", "y"], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"expected weights of shape \(T_out, T_in\)"):
        plot_attention(torch.rand(2, 3, 1), ["a"], ["x"], tmp_path / "a.png")
