"""streamlm: a Numba-compiled, streaming, word-level RNN language model."""

from streamlm.version import __version__ as __version__  # (one version: pyproject.toml)


def __getattr__(name):
    """Lazy exports: ``streamlm.Model`` / ``State`` / ``load``... import nothing heavy
    until used."""
    if name in ("Model", "LanguageModel", "State", "FullScoreReturn", "Stream", "load",
                "Config", "LoadMethod", "ARPALoadComplain"):
        from streamlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamlm' has no attribute {name!r}")
