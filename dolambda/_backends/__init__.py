"""Backends: where a job's tasks run. See :mod:`dolambda._backends.base`."""
