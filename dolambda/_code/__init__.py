"""The user's own code travels with the job.

dill pickles functions and classes of importable modules by reference, so the worker
must import those modules; the deployed function holds only dolambda and the
distributions deploy installed. This package ships the rest:

- :mod:`~dolambda._code.finder` (client): which modules a job needs, from the pickles
  themselves and a static scan of local sources, each classified (standard library,
  dolambda, an installed distribution, or the user's local module or package);
- :mod:`~dolambda._code.archive` (client): one deterministic, content-addressed zip
  of the local modules' sources, its key and its signing context;
- :mod:`~dolambda._code.loader` (worker): installs an archive by digest into a cache
  directory and onto ``sys.path``, so a warm worker never runs stale code.
"""
