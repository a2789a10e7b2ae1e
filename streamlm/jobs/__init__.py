"""The jobs: prepare, train, score, query, report, generate, and the parts they are made of."""
