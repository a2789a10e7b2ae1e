"""streamlm: a Numba-compiled, streaming, word-level RNN language model."""

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy exports: ``streamlm.Model`` / ``State`` / ``load``... import nothing heavy
    until used."""
    if name in ("Model", "LanguageModel", "State", "FullScoreReturn", "Stream", "load",
                "Config", "LoadMethod", "ARPALoadComplain"):
        from streamlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamlm' has no attribute {name!r}")
