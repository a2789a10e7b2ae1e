"""KenLM's loading options (``kenlm.Config``, ``LoadMethod``, ``ARPALoadComplain``), so
that code written for ``kenlm.Model(path, config)`` runs unchanged on a streamlm model
(:class:`streamlm.api.Model`). None of them changes how an RNN model loads."""

from __future__ import annotations


class LoadMethod:
    """KenLM's ``kenlm.LoadMethod``: how KenLM maps a binary n-gram model into memory
    (``Config.load_method``). A streamlm model file is read whole whatever it says."""

    LAZY = 0
    POPULATE_OR_LAZY = 1
    POPULATE_OR_READ = 2
    READ = 3
    PARALLEL_READ = 4


class ARPALoadComplain:
    """KenLM's ``kenlm.ARPALoadComplain`` (``Config.arpa_complain``): which oddities of
    an ARPA file KenLM warns about. A streamlm model is no ARPA file."""

    ALL = 0
    EXPENSIVE = 1
    NONE = 2


def _integer(value) -> int:
    """``value`` as KenLM's Config takes an enum: any number (truncated), not a string."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError("an integer is required")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TypeError("an integer is required") from None


class Config:
    """KenLM's ``kenlm.Config``, for ``Model(path, config)``: the same attributes with
    the same defaults, kept and read back, so code written for KenLM runs unchanged.
    None of them changes anything for an RNN model:

    * ``load_method`` (:class:`LoadMethod`, default ``POPULATE_OR_READ``): how KenLM
      maps a binary n-gram model (lazily, populated, read). A streamlm model file
      (an ``.npz``) is always read whole into memory and checksummed: there is no
      lazy or memory-mapped load of it, and no parallel read.
    * ``show_progress`` (default True): KenLM's progress bar while it reads an ARPA
      file. Loading a streamlm model is one read, with no bar.
    * ``arpa_complain`` (:class:`ARPALoadComplain`, default ``ALL``): KenLM's
      warnings about an ARPA file. A streamlm model is no ARPA file.
    """

    __slots__ = ("_load_method", "_show_progress", "_arpa_complain")

    def __init__(self):
        self._load_method = LoadMethod.POPULATE_OR_READ
        self._show_progress = True
        self._arpa_complain = ARPALoadComplain.ALL

    @property
    def load_method(self) -> int:
        return self._load_method

    @load_method.setter
    def load_method(self, to) -> None:
        self._load_method = _integer(to)

    @property
    def show_progress(self) -> bool:
        return self._show_progress

    @show_progress.setter
    def show_progress(self, to) -> None:
        self._show_progress = bool(to)

    @property
    def arpa_complain(self) -> int:
        return self._arpa_complain

    @arpa_complain.setter
    def arpa_complain(self, to) -> None:
        self._arpa_complain = _integer(to)

    def __getstate__(self) -> tuple:
        return (self._load_method, self._show_progress, self._arpa_complain)

    def __setstate__(self, state: tuple) -> None:
        self._load_method, self._show_progress, self._arpa_complain = state

    def __repr__(self) -> str:
        return (f"Config(load_method={self._load_method}, show_progress={self._show_progress}"
                f", arpa_complain={self._arpa_complain})")

    @classmethod
    def of(cls, config) -> Config:
        """``config`` as a :class:`Config`: None (the defaults), a Config, or a
        ``kenlm.Config`` (its values copied); TypeError for anything else."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if all(hasattr(config, a) for a in ("load_method", "show_progress", "arpa_complain")):
            c = cls()
            c.load_method, c.show_progress = config.load_method, config.show_progress
            c.arpa_complain = config.arpa_complain
            return c
        hint = (f"; the engine is a keyword argument: engine={config!r}"
                if config in ("numba", "numpy") else "")
        raise TypeError(f"Argument 'config' has incorrect type (expected streamlm.Config or "
                        f"kenlm.Config, got {type(config).__name__}){hint}")
