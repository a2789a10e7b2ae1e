"""streamlm: a Numba-compiled, streaming, word-level RNN language model."""

__version__ = "0.1.0"
