"""Importing this module registers dolambda as the joblib backend ``"dolambda"``.

>>> import joblib
>>> import dolambda.joblib  # registers the backend
>>> from dolambda import register
>>> register("sequential")
>>> with joblib.parallel_config(backend="dolambda"):
...     joblib.Parallel(n_jobs=2)(joblib.delayed(pow)(x, 2) for x in range(4))
[0, 1, 4, 9]

Pass a dolambda backend with ``parallel_config(backend="dolambda",
dolambda_backend=LocalBackend(4))``; otherwise the registered one is used.
joblib is an optional dependency: ``import dolambda`` never imports it.
"""

from __future__ import annotations

from dolambda._joblib import BACKEND_NAME, DolambdaJoblibBackend, register_joblib_backend

register_joblib_backend()

__all__ = ["BACKEND_NAME", "DolambdaJoblibBackend", "register_joblib_backend"]
