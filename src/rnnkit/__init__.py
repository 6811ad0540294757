"""rnnkit: recurrent sequence models on PyTorch, written from the equations.

Shape glossary used throughout: ``B`` batch, ``T`` time, ``I`` input size, ``H`` hidden size,
``G`` gate width (``4H`` LSTM, ``3H`` GRU, ``H`` RNN), ``D`` directions, ``L`` layers.
"""

from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN, RNNBase

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RNNBase", "RNNCell", "LSTMCell", "GRUCell", "__version__"]
