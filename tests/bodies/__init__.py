"""Loop bodies the tests send to the emulator's Lambda workers.

They travel as a user's own module does: dill pickles a module-level function by
reference, the worker cannot import ``tests`` by itself (it runs the function's package in
an isolated interpreter), so the job's code archive carries this package. That is why
these modules import nothing a deployed function lacks: no pytest, no test helpers, no
moto — only the standard library, dolambda, numpy and what the function's package holds.
"""
