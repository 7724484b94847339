"""``python -m dolambda``: the same as the ``dolambda`` command."""

from dolambda.cli import run

if __name__ == "__main__":
    run()
