"""The machine: compiled kernels, BLAS, threads, and the planner that decides how a
block is computed."""
