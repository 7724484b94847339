"""More memory when a task runs out of it (issue 16 item 2), on the emulator.

The emulator's function has a base memory and larger tiers, each a published version
behind the alias ``mem-<MB>`` (as ``dolambda deploy`` makes them); the emulator runs an
invocation of an alias with its version's MemorySize and kills an environment past it, as
Lambda does. A task that runs out of memory moves up a tier (an Invoke of that alias)
before it is reported; a chunk is split first.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dolambda import TaskError, foreach
from dolambda._errors import InvalidArgument
from dolambda.emulator import Emulator
from tests.bodies.tiers import needs_memory
from tests.faults.conftest import backend_for

BASE, TIER = 256, 512
#: resident MB that pass the base limit (the runtime and the worker hold ~100 MB more)
#: and fit the tier's
FITS_TIER = 250
#: more than the largest tier holds
TOO_MUCH = 700


@pytest.fixture
def tiered(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator(timeout=20.0, memory_mb=BASE, memory_tiers=(TIER,), workers=2)


def test_a_task_that_runs_out_of_memory_moves_up_a_tier(tiered: Emulator) -> None:
    mbs = [0, 0, FITS_TIER, 0]
    backend = backend_for(tiered, retries=0, backups=False)
    job = foreach(x=range(4), mb=mbs).chunk_size(1).submit(needs_memory, backend=backend)
    assert job.result(timeout=120) == [0, 1, 2, 3]
    # four invocations on the base memory (one ran out: it is billed too), one on the tier
    assert job.stats.tasks_by_tier == {BASE: 4, TIER: 1}, job.stats.tasks_by_tier
    assert f"memory tiers: {BASE} MB x4" in job.stats.summary(), job.stats.summary()
    assert tiered.stats.killed >= 1  # it really ran out of memory on the base
    assert job.stats.retries == 0  # moving up a tier is not a retry
    # the next run of the same body starts on the tier that worked
    again = foreach(x=range(4), mb=mbs).chunk_size(1).submit(needs_memory, backend=backend)
    assert again.result(timeout=120) == [0, 1, 2, 3]
    assert again.stats.tasks_by_tier == {TIER: 4}, again.stats.tasks_by_tier


def test_a_chunk_is_split_before_it_moves_up(tiered: Emulator) -> None:
    mbs = [0, 0, FITS_TIER, 0]
    backend = backend_for(tiered, retries=0, backups=False)
    job = foreach(x=range(4), mb=mbs).chunk_size(4).submit(needs_memory, backend=backend)
    assert job.result(timeout=120) == [0, 1, 2, 3]
    # only the iteration that needed more memory ran on the tier
    assert job.stats.tasks_by_tier.get(TIER) == 1, job.stats.tasks_by_tier


def test_out_of_memory_on_the_largest_tier_names_every_tier(tiered: Emulator) -> None:
    backend = backend_for(tiered, retries=0, backups=False)
    loop = foreach(x=range(3), mb=[0, TOO_MUCH, 0]).chunk_size(1).errorhandling("pass")
    result = loop.submit(needs_memory, backend=backend).result(timeout=120)
    assert result[0] == 0 and result[2] == 2, result
    error = result[1]
    assert isinstance(error, TaskError) and error.error_type == "memory", error
    assert f"ran out of memory on {BASE} and {TIER} MB" in str(error), str(error)
    assert "more than the largest memory tier" in str(error), str(error)


def test_memory_asks_for_the_smallest_tier_that_has_it(tiered: Emulator) -> None:
    backend = backend_for(tiered, retries=0, backups=False)
    loop = foreach(x=range(3), mb=[0, 0, 0]).chunk_size(1)
    job = loop.submit(needs_memory, backend=backend.with_memory(300))
    assert job.result(timeout=120) == [0, 1, 2]
    assert job.stats.tasks_by_tier == {TIER: 3}, job.stats.tasks_by_tier
    assert loop.do_lambda(needs_memory, backend=backend, memory=TIER, progress=False) == [0, 1, 2]
    with pytest.raises(InvalidArgument, match=r"memory=4096 MB is more than .* 512 MB"):
        loop.do_lambda(needs_memory, backend=backend, memory=4096)


def test_a_call_that_runs_out_of_memory_calls_the_next_tier(tiered: Emulator) -> None:
    # trigger="call": the tier's alias is called synchronously (RequestResponse with its
    # Qualifier), and its answer carries the result
    backend = backend_for(tiered, retries=0, backups=False, trigger="call")
    loop = foreach(x=range(3), mb=[0, FITS_TIER, 0]).chunk_size(1)
    job = loop.submit(needs_memory, backend=backend)
    assert job.result(timeout=120) == [0, 1, 2]
    assert job.stats.tasks_by_tier == {BASE: 3, TIER: 1}, job.stats.tasks_by_tier
    assert job.stats.client_s3_requests.get("list", 0) == 0, job.stats.client_s3_requests
