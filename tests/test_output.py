"""A remote body's output (print, warnings, logging) is captured per task and comes back
with its result: ``job.output(i)``, and a failed iteration's TaskError carries the last
lines of it (issue 15 item 7). On local processes and on the emulator's isolated workers."""

from __future__ import annotations

import pytest

from dolambda import Backend, TaskError, foreach
from dolambda._backends.sequential import SequentialBackend
from dolambda._core.execute import OUTPUT_LIMIT, OutputTail, run_iterations
from tests.bodies.output import chatty, fails_on_two, loud


@pytest.fixture(params=["local", "lambda"])
def remote(request: pytest.FixtureRequest) -> Backend:
    if request.param == "local":
        from tests.helpers import LOCAL2

        return LOCAL2
    backend: Backend = request.getfixturevalue("lambda_backend")
    return backend


def test_job_output_has_prints_warnings_and_logging(remote: Backend) -> None:
    job = foreach(x=range(4)).chunk_size(2).submit(chatty, backend=remote, progress=False)
    assert job.result(timeout=60) == [0, 1, 2, 3]
    for i in range(4):
        out = job.output(i)
        assert f"print from {i}" in out
        assert f"UserWarning: warning from {i}" in out
        assert f"log from {i}" in out
    # a task runs a chunk: iterations 0 and 1 share their task's output
    assert job.output(0) == job.output(1) != job.output(2)
    assert job.output(99) == ""


def test_a_failed_iteration_carries_the_last_lines_of_its_task(remote: Backend) -> None:
    loop = foreach(x=range(4)).chunk_size(4)
    with pytest.raises(TaskError) as caught:
        loop.run(fails_on_two, backend=remote, progress=False)
    err = caught.value
    assert err.index == 2
    lines = err.output.splitlines()
    assert lines[-1] == "x=2 line 29"  # up to the failure, not past it
    assert len(lines) == 20
    assert "Output of its task (last lines):\nx=2 line 10\n" in str(err)


def test_output_is_bounded_to_its_last_characters(remote: Backend) -> None:
    job = foreach(x=range(2)).chunk_size(1).submit(loud, backend=remote, progress=False)
    job.result(timeout=60)
    out = job.output(1)
    assert len(out) == OUTPUT_LIMIT  # 4,000 lines of 48 characters were written
    assert out.endswith("1:03999 " + "." * 40 + "\n")


def test_the_sequential_backend_leaves_output_to_the_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = foreach(x=range(2)).submit(
        lambda x: print(f"here {x}"), backend=SequentialBackend(offload=True), progress=False
    )
    job.result(timeout=30)
    assert job.output(0) == ""
    assert "here 0" in capsys.readouterr().out


def test_capture_writes_through_and_restores_the_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    before = sys.stdout, sys.stderr
    run = run_iterations(
        lambda x: print(x) or print(f"err {x}", file=sys.stderr), ("x",), [(1,), (2,)], capture=True
    )
    assert (sys.stdout, sys.stderr) == before
    assert run.output == "1\nerr 1\n2\nerr 2\n"
    seen = capsys.readouterr()
    assert seen.out == "1\n2\n" and seen.err == "err 1\nerr 2\n"
    assert run_iterations(lambda x: print(x), ("x",), [(1,)]).output == ""


def test_output_tail_keeps_the_last_characters() -> None:
    tail = OutputTail(limit=10)
    for k in range(100):
        tail.add(f"{k}\n")
    assert tail.text() == "\n97\n98\n99\n"[-10:]
    assert tail.last_lines(2) == "98\n99"
    assert OutputTail().last_lines(3) == ""
