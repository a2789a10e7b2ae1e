"""streamlm's benchmarks: scripts run from the repository root as ``python -m bench.<name>``
(see bench/README.md). Not part of the installed package."""
