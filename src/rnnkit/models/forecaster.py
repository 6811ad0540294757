"""Many-to-many, aligned, on numbers: at every step, forecast the next ``horizon`` values.

Input at step ``t`` is the (scaled) target value and any covariates; the output at step ``t`` is
the forecast of the target at ``t+1 .. t+horizon`` (the "direct" strategy: no forecast is fed
back, so future covariates are never needed). Training uses the outputs of all steps, forecasting
the last one. With ``residual`` the head predicts the change from the step's own target value,
which lets a saturating recurrent layer follow a trend past the range it saw in training.

Shapes: ``B`` batch, ``T`` steps, ``I`` features per step (target first, then covariates),
``P`` horizon, ``H`` hidden size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def __post_init__(self) -> None:
        name = "ForecasterConfig"
        for field in ("input_size", "horizon", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive integer, got {value!r}")
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
            y = y + x[:, :, :1]  # broadcast the step's own value over the horizon
        return y

    def predict(self, x: Tensor) -> Tensor:
        """The forecast after the last step. Shapes: ``x`` ``(B, T, I)`` -> ``(B, P)``."""
        return self(x)[:, -1]
