"""Many-to-many, aligned, on numbers: at every step, forecast the next ``horizon`` values.

Input at step ``t`` is the (scaled) target value and any covariates; the output at step ``t`` is
the forecast of the target at ``t+1 .. t+horizon`` (the "direct" strategy: no forecast is fed
back, so future covariates are never needed). Training uses the outputs of all steps, forecasting
the last one. With ``residual`` the head predicts a correction to a naive forecast made from
the inputs (the step's own value, or with ``season`` the value one season before the target
step, i.e. seasonal naive), which lets a saturating recurrent layer follow a trend past the
range it saw in training.

Shapes: ``B`` batch, ``T`` steps, ``I`` features per step (target first, then covariates),
``P`` horizon, ``H`` hidden size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .classifier import CELLS, make_recurrent

__all__ = ["ForecasterConfig", "Forecaster"]


@dataclass
class ForecasterConfig:
    """Configuration of a :class:`Forecaster`; ``input_size`` counts the target plus covariates."""

    input_size: int = 1
    horizon: int = 12
    hidden_size: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0
    residual: bool = True
    season: int = 0

    def __post_init__(self) -> None:
        name = "ForecasterConfig"
        for field in ("input_size", "horizon", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive integer, got {value!r}")
        if not isinstance(self.season, int) or self.season < 0:
            raise ValueError(f"{name}: season must be a non-negative integer, got {self.season!r}")
        if self.cell not in CELLS:
            raise ValueError(f"{name}: unknown cell type {self.cell!r}; expected one of {', '.join(CELLS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Forecaster(nn.Module):
    """A recurrent multi-horizon forecaster.

    Shapes:
        - x: ``(B, T, I)``, feature 0 the target
        - returns ``(B, T, P)``: row ``t`` forecasts the target at ``t+1 .. t+P``
    """

    def __init__(self, config: ForecasterConfig):
        super().__init__()
        self.config = c = config
        self.rnn = make_recurrent(c.cell, c.input_size, c.hidden_size, c.num_layers, dropout=c.dropout)
        self.head = nn.Linear(c.hidden_size, c.horizon)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.config.input_size:
            raise ValueError(
                f"Forecaster: expected input (B, T, {self.config.input_size}), got {tuple(x.shape)}"
            )
        out, _ = self.rnn(x)  # (B, T, H)
        y = self.head(out)  # (B, T, P)
        if self.config.residual:
            y = y + self.naive(x)
        return y

    def naive(self, x: Tensor) -> Tensor:
        """The forecast the head corrects. Shapes: ``x`` ``(B, T, I)`` -> ``(B, T, P)``.

        Row ``t``, horizon ``h`` (1-based): the target at ``t - S + ((h-1) mod S) + 1`` (the same
        phase one season earlier), or at ``t`` when that lies before the window or ``S`` is 0.
        """
        B, T, _ = x.shape
        P, S = self.config.horizon, self.config.season
        t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
        if S > 0:
            h = torch.arange(P, device=x.device).unsqueeze(0)  # (1, P), h-1
            index = t - S + (h % S) + 1  # (T, P)
            index = torch.where(index >= 0, index, t.expand(T, P))
        else:
            index = t.expand(T, P)
        # (B, T) gathered at (B, T*P) -> (B, T, P)
        return x[:, :, 0].gather(1, index.reshape(1, -1).expand(B, -1)).view(B, T, P)

    def predict(self, x: Tensor) -> Tensor:
        """The forecast after the last step. Shapes: ``x`` ``(B, T, I)`` -> ``(B, P)``."""
        return self(x)[:, -1]
