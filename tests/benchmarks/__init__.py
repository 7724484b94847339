"""The dolambda benchmark suite: ``python tests/benchmarks/run.py`` (never collected by pytest)."""
