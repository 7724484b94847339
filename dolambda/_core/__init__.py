"""The core, which does no I/O: the loop spec (:mod:`.spec`), the task types (:mod:`.tasks`),
the planner (:mod:`.plan`), combine semantics (:mod:`.combine`), the random streams
(:mod:`.seeds`), the one execution path every backend ends in (:mod:`.execute`) and the run
engine that drives a backend and combines what it yields (:mod:`.run`)."""
