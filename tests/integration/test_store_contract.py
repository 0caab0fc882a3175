"""The Store contract: what every backend guarantees, run on each one through `database_url`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from corral.config import Settings
from corral.errors import LeaseLost, RunNotFound, SessionNotFound, StoreError
from corral.store import open_store
from corral.store.base import Event, Fence, NewRun, RunStatus, StepKind, StepRecord, StepStatus, Store

LEASE = 30.0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = open_store(Settings(database_url=database_url))
    async with s:
        yield s


def new_run(
    run_id: str | None = None,
    *,
    session: str | None = None,
    tenant: str = "acme",
    agent: str = "a",
    created_at: float | None = None,
    input_json: str = '{"q":1}',
) -> NewRun:
    return NewRun(
        id=run_id or uuid.uuid4().hex,
        session_id=session or uuid.uuid4().hex,
        tenant=tenant,
        principal="alice",
        roles=("reader", "writer"),
        agent=agent,
        agent_version="v1",
        input_json=input_json,
        limits={"max_steps": 7},
        created_at=created_at if created_at is not None else time.time(),
        metadata={"source": "test"},
    )


def step(
    run_id: str, seq: str, attempt: int, *, status: StepStatus = StepStatus.COMPLETED, result: str | None = "1"
) -> StepRecord:
    now = time.time()
    return StepRecord(run_id, seq, StepKind.STEP, f"s{seq}", "h", status, result, None, attempt, now, now)


def events(run_id: str, *ids: int) -> list[Event]:
    return [Event(run_id, i, "custom", {"n": i}) for i in ids]


async def claim(store: Store, owner: str = "w1", *, now: float | None = None, limit: int = 10, agents=("a",)):
    return await store.claim_runs(owner, limit, list(agents), LEASE, now if now is not None else time.time())


async def claimed_ids(store: Store, **kw) -> list[str]:
    return [c.run.id for c in await claim(store, **kw)]


async def test_create_run_queues_it_in_its_tenant(store):
    rec = await store.create_run(new_run("r1", session="s1", input_json='{"b":1,"a":[2,3]}'))
    assert rec.status is RunStatus.QUEUED and rec.attempt == 0 and rec.lease_owner is None
    assert rec.input == {"b": 1, "a": [2, 3]} and list(rec.input) == ["b", "a"]  # key order survives
    assert rec.roles == ("reader", "writer") and rec.limits == {"max_steps": 7} and rec.metadata == {"source": "test"}
    assert (await store.get_run("r1", "acme")) == rec
    with pytest.raises(RunNotFound):
        await store.get_run("r1", "other-tenant")
    with pytest.raises(RunNotFound):
        await store.get_run("no-such-run")
    with pytest.raises(SessionNotFound):
        await store.create_run(new_run("r2", session="s1", tenant="other-tenant"))
    assert [r.id for r in await store.list_runs(session_id="s1")] == ["r1"]


async def test_a_claim_takes_runnable_runs_under_a_lease(store):
    await store.create_run(new_run("r1"))
    await store.create_run(new_run("r2", agent="not-served-here"))
    now = time.time()
    claims = await claim(store, now=now)
    assert [c.run.id for c in claims] == ["r1"]
    run = claims[0].run
    assert run.status is RunStatus.RUNNING and run.attempt == 1 and run.lease_owner == "w1"
    assert run.lease_expires_at == pytest.approx(now + LEASE) and run.started_at == pytest.approx(now)
    assert claims[0].steps == {} and claims[0].last_event_id == 0
    assert await claim(store, "w2", now=now) == []
    assert (await store.get_run("r1")).status is RunStatus.RUNNING


async def test_queued_runs_are_claimed_in_arrival_order(store):
    ids = [(await store.create_run(new_run(f"r{i}"))).id for i in range(5)]
    assert await claimed_ids(store, limit=2) == ids[:2]
    assert await claimed_ids(store, limit=2) == ids[2:4]
    assert await claimed_ids(store, limit=2) == ids[4:]


async def test_a_stale_attempt_is_fenced_out_of_every_write(store):
    await store.create_run(new_run("r1", session="s1"))
    now = time.time()
    await claim(store, "w1", now=now)
    old = Fence("r1", 1)
    await store.record_step(old, step("r1", "1", 1), events("r1", 1, 2))

    [again] = await claim(store, "w2", now=now + LEASE + 1)  # the lease expired: any worker may reclaim
    assert again.run.attempt == 2 and again.run.lease_owner == "w2"
    assert set(again.steps) == {"1"} and again.last_event_id == 2
    new = Fence("r1", 2)

    await store.deliver_message("s1", '"hello"', None, time.time())
    with pytest.raises(LeaseLost):
        await store.record_step(old, step("r1", "2", 1), events("r1", 3))
    assert await store.append_events([(old, events("r1", 3))]) == {"r1"}  # refused, and said so
    assert [e.id for e in await store.list_events("r1")] == [1, 2]
    with pytest.raises(LeaseLost):
        await store.consume_message(old, step("r1", "2", 1, result=None), events("r1", 3))
    with pytest.raises(LeaseLost):
        await store.park_run(old, time.time() + 60, 1.0, events("r1", 3), False)
    with pytest.raises(LeaseLost):
        await store.release_run(old, 1.0, events("r1", 3))
    with pytest.raises(LeaseLost):
        await store.finish_run(old, RunStatus.SUCCEEDED, '"zombie"', None, 1.0, events("r1", 3))
    renewal = await store.renew_leases("w1", [old], LEASE, time.time(), {"r1": 1.0})
    assert renewal.lost == {"r1"}

    # nothing of the stale attempt landed; the current one writes freely
    assert [s.seq for s in await store.list_steps("r1")] == ["1"]
    assert [e.id for e in await store.list_events("r1")] == [1, 2]
    msg = await store.consume_message(new, step("r1", "2", 2, result=None), events("r1", 3))
    assert msg is not None and msg.payload == "hello"
    await store.finish_run(new, RunStatus.SUCCEEDED, '"done"', None, 2.0, events("r1", 4))
    run = await store.get_run("r1")
    assert run.status is RunStatus.SUCCEEDED and run.output == "done" and run.attempt == 2
    assert run.lease_owner is None and run.finished_at is not None
    assert [e.id for e in await store.list_events("r1")] == [1, 2, 3, 4]


async def test_an_expired_lease_is_reclaimed_and_a_renewed_one_is_not(store):
    await store.create_run(new_run("r1"))
    now = time.time()
    await claim(store, "w1", now=now)
    renewal = await store.renew_leases("w1", [Fence("r1", 1)], LEASE, now + 20, {"r1": 3.5})
    assert renewal.lost == frozenset() and renewal.cancel_requested == frozenset()
    run = await store.get_run("r1")
    assert run.lease_expires_at == pytest.approx(now + 20 + LEASE) and run.time_used == 3.5
    assert await claim(store, "w2", now=now + LEASE + 1) == []
    [c] = await claim(store, "w2", now=now + 20 + LEASE + 1)
    assert c.run.attempt == 2 and c.run.lease_owner == "w2" and c.run.time_used == 3.5


async def test_a_pending_step_completes_once_and_a_completed_step_is_never_rewritten(store):
    await store.create_run(new_run("r1"))
    await claim(store)
    fence = Fence("r1", 1)
    await store.record_step(fence, step("r1", "1", 1, status=StepStatus.PENDING, result='{"deadline":null}'), [])
    await store.record_step(fence, step("r1", "1", 1, result='{"z":1,"a":2}'), [])
    with pytest.raises(LeaseLost):
        await store.record_step(fence, step("r1", "1", 1, result='"other"'), events("r1", 1))
    [s] = await store.list_steps("r1")
    assert s.status is StepStatus.COMPLETED and s.result_json == '{"z":1,"a":2}'  # the exact text
    assert await store.list_events("r1") == []


async def test_a_parked_run_wakes_when_its_time_comes(store):
    await store.create_run(new_run("r1"))
    now = time.time()
    await claim(store, now=now)
    assert await store.park_run(Fence("r1", 1), now + 100, 1.5, events("r1", 1), False) is True
    run = await store.get_run("r1")
    assert run.status is RunStatus.WAITING and run.wake_at == pytest.approx(now + 100)
    assert run.lease_owner is None and run.time_used == 1.5
    assert await claim(store, now=now + 50) == []
    [c] = await claim(store, "w2", now=now + 101)
    assert c.run.attempt == 2 and c.run.wake_at is None and c.last_event_id == 1


async def test_a_message_wakes_its_waiting_run_and_is_consumed_with_the_step(store):
    await store.create_run(new_run("r1", session="s1"))
    await claim(store)
    fence = Fence("r1", 1)
    await store.record_step(fence, step("r1", "1", 1, status=StepStatus.PENDING, result='{"deadline":null}'), [])
    assert await store.park_run(fence, None, 0.0, [], True) is True
    assert (await store.get_run("r1")).wake_at is None
    assert await claim(store, now=time.time() + 10_000) == []  # no timer: only a message wakes it

    with pytest.raises(SessionNotFound):
        await store.deliver_message("no-such-session", '"x"', None, time.time())
    with pytest.raises(SessionNotFound):
        await store.deliver_message("s1", '"x"', "other-tenant", time.time())
    msg_id = await store.deliver_message("s1", '{"text":"hi"}', "acme", time.time())
    [c] = await claim(store)
    assert c.run.id == "r1" and c.steps["1"].status is StepStatus.PENDING
    fence = Fence("r1", 2)

    msg = await store.consume_message(fence, step("r1", "1", 2, result=None), events("r1", 1))
    assert msg is not None and (msg.id, msg.session_id, msg.payload) == (msg_id, "s1", {"text": "hi"})
    [s] = await store.list_steps("r1")
    assert s.status is StepStatus.COMPLETED and s.result_json == '{"text":"hi"}' and s.attempt == 2
    assert [e.id for e in await store.list_events("r1")] == [1]
    assert await store.consume_message(fence, step("r1", "2", 2, result=None), []) is None

    # a message that is already waiting keeps the run from parking: the caller consumes it instead
    await store.deliver_message("s1", '"second"', None, time.time())
    assert await store.park_run(fence, None, 0.0, [], True) is False
    assert (await store.get_run("r1")).status is RunStatus.RUNNING
    msg = await store.consume_message(fence, step("r1", "2", 2, result=None), [])
    assert msg is not None and msg.payload == "second"


async def test_cancel_ends_queued_and_waiting_runs_and_flags_running_ones(store):
    await store.create_run(new_run("queued"))
    await store.create_run(new_run("waiting"))
    await store.create_run(new_run("running"))
    await store.create_run(new_run("later"))  # claimed last: arrival order
    now = time.time()
    assert await claimed_ids(store, limit=2, now=now) == ["queued", "waiting"]
    await store.release_run(Fence("queued", 1), 0.0, [])  # back in the queue, unclaimed
    await store.park_run(Fence("waiting", 1), now + 3600, 0.0, events("waiting", 1, 2), False)
    assert await claimed_ids(store, limit=1, now=now) == ["queued"]
    await store.release_run(Fence("queued", 2), 0.0, [])
    assert (await store.get_run("queued")).status is RunStatus.QUEUED

    for rid in ("queued", "waiting"):
        rec = await store.request_cancel(rid, "acme", now)
        assert rec.status is RunStatus.CANCELLED and rec.finished_at == pytest.approx(now) and rec.error
        end = (await store.list_events(rid))[-1]
        assert end.type == "end" and end.data["status"] == "cancelled"
    assert [e.id for e in await store.list_events("waiting")] == [1, 2, 3]

    assert await claimed_ids(store, limit=1, now=now + 7200) == ["running"]
    rec = await store.request_cancel("running", None, now)
    assert rec.status is RunStatus.RUNNING and rec.cancel_requested
    renewal = await store.renew_leases("w1", [Fence("running", 1)], LEASE, time.time(), {})
    assert renewal.cancel_requested == {"running"} and renewal.lost == frozenset()
    # a run that parks with a cancel pending is due at once, so a worker ends it promptly
    await store.park_run(Fence("running", 1), time.time() + 3600, 0.0, [], False)
    assert (await store.get_run("running")).wake_at <= time.time()
    [c] = await store.claim_runs("w2", 1, ["a"], LEASE, time.time(), run_id="running")
    assert c.run.cancel_requested

    assert (await store.request_cancel("queued", None, time.time())).finished_at == pytest.approx(now)
    with pytest.raises(RunNotFound):
        await store.request_cancel("later", "other-tenant", now)
    with pytest.raises(RunNotFound):
        await store.request_cancel("no-such-run", None, now)


async def test_the_runs_of_a_session_run_one_at_a_time_in_arrival_order(store):
    for rid in ("a1", "a2", "a3"):
        await store.create_run(new_run(rid, session="A"))
    await store.create_run(new_run("b1", session="B"))
    assert sorted(await claimed_ids(store)) == ["a1", "b1"]
    assert await claimed_ids(store) == []
    assert await store.claim_runs("w1", 1, ["a"], LEASE, time.time(), run_id="a2") == []

    await store.finish_run(Fence("a1", 1), RunStatus.SUCCEEDED, "null", None, 0.0, [])
    assert await claimed_ids(store) == ["a2"]
    await store.park_run(Fence("a2", 1), time.time() + 3600, 0.0, [], False)
    assert await claimed_ids(store) == []  # a parked run still holds its session
    [c] = await store.claim_runs("w1", 1, ["a"], LEASE, time.time() + 3601, run_id="a2")
    assert c.run.attempt == 2
    await store.release_run(Fence("a2", 2), 0.0, [])  # drained: it goes before a3 again
    assert await claimed_ids(store) == ["a2"]
    await store.finish_run(Fence("a2", 3), RunStatus.FAILED, None, {"type": "Boom"}, 0.0, [])
    [c] = await store.claim_runs("w1", 1, ["a"], LEASE, time.time(), run_id="a3")
    assert c.run.id == "a3"
    assert (await store.get_run("a2")).error == {"type": "Boom"}


async def test_list_events_in_order_from_a_position(store):
    await store.create_run(new_run("r1"))
    await store.create_run(new_run("r2"))
    await claim(store)
    await store.record_step(Fence("r1", 1), step("r1", "1", 1), events("r1", 1, 2, 3))
    assert (
        await store.append_events([(Fence("r1", 1), events("r1", 4, 5, 6)), (Fence("r2", 1), events("r2", 1, 2))])
        == set()
    )
    got = await store.list_events("r1")
    assert [(e.run_id, e.id, e.type, e.data) for e in got] == [("r1", i, "custom", {"n": i}) for i in range(1, 7)]
    assert [e.id for e in await store.list_events("r1", after=2, limit=3)] == [3, 4, 5]
    assert await store.list_events("r1", after=6) == []


async def test_events_keep_any_text_and_shape_exactly(store):
    await store.create_run(new_run("r1"))
    await claim(store)
    tricky = [
        {"text": 'quote " backslash \\ newline \n tab \t', "seq": "1.2"},
        {"text": "non-ASCII: é ü 漢字 🙂", "nested": {"list": [1, 2.5, None, True], "empty": {}}},
        {"big": 2**63 + 1, "neg": -0.125, "e": 1e300},
        {},
    ]
    kinds = ["token", "custom", 'x"y', "end"]
    batch = [Event("r1", i, kind, data) for i, (kind, data) in enumerate(zip(kinds, tricky, strict=True), 1)]
    await store.append_events([(Fence("r1", 1), batch[:2])])
    await store.record_step(Fence("r1", 1), step("r1", "1", 1), batch[2:])
    assert [(e.id, e.type, e.data) for e in await store.list_events("r1")] == [(e.id, e.type, e.data) for e in batch]


async def test_a_renewal_of_many_leases_names_exactly_the_lost_ones(store):
    ids = [f"r{i}" for i in range(50)]
    for rid in ids:
        await store.create_run(new_run(rid, session=f"s-{rid}"))
    now = time.time()
    await claim(store, "w1", now=now, limit=50)
    held = [Fence(rid, 1) for rid in ids] + [Fence("gone", 1)]
    held[7] = Fence("r7", 2)  # an attempt that is not the current one
    await store.finish_run(Fence("r9", 1), RunStatus.SUCCEEDED, "null", None, 0.0, [])
    used = {rid: i / 4 for i, rid in enumerate(ids)}
    renewal = await store.renew_leases("w1", held, LEASE, now + 20, used)
    assert renewal.lost == frozenset({"r7", "r9", "gone"})
    for rid in ("r0", "r13", "r49"):
        run = await store.get_run(rid)
        assert run.lease_expires_at == pytest.approx(now + 20 + LEASE) and run.time_used == used[rid]
    assert (await store.get_run("r7")).lease_expires_at == pytest.approx(now + LEASE)


async def test_append_events_writes_the_held_runs_of_a_batch_and_names_the_others(store):
    for rid in ("r1", "r2", "r3"):
        await store.create_run(new_run(rid, session=f"s-{rid}"))
    await claim(store, limit=3)
    await store.finish_run(Fence("r2", 1), RunStatus.SUCCEEDED, "null", None, 0.0, events("r2", 1))
    batch = [(Fence("r1", 1), events("r1", 1, 2)), (Fence("r2", 1), events("r2", 2)), (Fence("r3", 7), events("r3", 1))]
    assert await store.append_events(batch) == {"r2", "r3"}  # r2 has ended, r3's attempt is not current
    assert [e.id for e in await store.list_events("r1")] == [1, 2]
    assert [e.id for e in await store.list_events("r2")] == [1]
    assert await store.list_events("r3") == []
    assert await store.append_events([]) == set()


async def test_prune_deletes_the_journals_of_finished_runs_only(store):
    await store.create_run(new_run("done", session="s1"))
    await store.create_run(new_run("busy"))
    await claim(store)
    await store.record_step(Fence("done", 1), step("done", "1", 1), events("done", 1))
    await store.record_step(Fence("busy", 1), step("busy", "1", 1), events("busy", 1))
    await store.finish_run(Fence("done", 1), RunStatus.SUCCEEDED, '"ok"', None, 0.0, events("done", 2))
    assert await store.prune(time.time() - 3600) == 0
    assert await store.prune(time.time() + 1) == 1
    assert await store.list_steps("done") == [] and await store.list_events("done") == []
    assert (await store.get_run("done")).output == "ok"  # the run and its outcome stay
    assert len(await store.list_steps("busy")) == 1 and len(await store.list_events("busy")) == 1
    assert await store.prune(time.time() + 1) == 0


async def test_stats_count_runs_by_status_and_the_oldest_queued_age(store):
    now = time.time()
    assert await store.stats(now) == {"queued": 0, "running": 0, "waiting": 0, "due": 0, "oldest_queued_age_seconds": 0}
    await store.create_run(new_run("r1", created_at=now - 5))
    await store.create_run(new_run("w1", created_at=now - 5))
    await claim(store, limit=2)
    await store.park_run(Fence("w1", 1), now + 60, 0.0, [], False)
    await store.create_run(new_run("q1", created_at=now - 30))
    await store.create_run(new_run("q2", created_at=now - 10))
    stats = await store.stats(now)
    assert stats == {"queued": 2, "running": 1, "waiting": 1, "due": 0, "oldest_queued_age_seconds": pytest.approx(30)}
    later = await store.stats(now + 61)  # the parked run's timer has fired: a worker must take it
    assert later["due"] == 1 and later["waiting"] == 1


async def test_admission_counts_the_tenants_queued_and_running_runs_and_all_queued(store):
    for rid in ("q1", "q2", "r1", "w1", "d1"):
        await store.create_run(new_run(rid))
    await store.create_run(new_run("other", tenant="other"))
    for rid in ("r1", "w1", "d1"):
        await store.claim_runs("w", 1, ["a"], LEASE, time.time(), run_id=rid)
    await store.park_run(Fence("w1", 1), time.time() + 60, 0.0, [], False)
    await store.finish_run(Fence("d1", 1), RunStatus.SUCCEEDED, "null", None, 0.0, [])
    # acme: q1, q2 queued and r1 running (w1 parked, d1 done); all queued: q1, q2 and "other"
    assert await store.admission_counts("acme") == (3, 3)
    assert await store.admission_counts("other") == (1, 3)
    assert await store.admission_counts("nobody") == (0, 3)


async def test_list_runs_filters_newest_first(store):
    await store.create_run(new_run("r1", session="s1"))
    await store.create_run(new_run("r2", session="s1"))
    await store.create_run(new_run("r3", session="s2", tenant="other"))
    await store.claim_runs("w1", 1, ["a"], LEASE, time.time(), run_id="r3")
    assert [r.id for r in await store.list_runs()] == ["r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs(session_id="s1")] == ["r2", "r1"]
    assert [r.id for r in await store.list_runs(tenant="other")] == ["r3"]
    assert [r.id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["r3"]
    assert [r.id for r in await store.list_runs(session_id="s1", status=RunStatus.QUEUED, limit=1)] == ["r2"]
    # several statuses are read in one statement: a run claimed meanwhile is in one of them
    both = (RunStatus.QUEUED, RunStatus.RUNNING)
    assert [r.id for r in await store.list_runs(status=both)] == ["r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs(status=[RunStatus.WAITING, RunStatus.RUNNING])] == ["r3"]
    assert await store.list_runs(status=()) == []


async def test_writes_tell_this_process_s_listeners(store):
    topics: list[str] = []
    store.subscribe(topics.append)
    await store.create_run(new_run("r1", session="s1"))
    assert topics == ["run"]
    await store.deliver_message("s1", '"hi"', None, time.time())
    assert topics[-1] == "message"
    await store.request_cancel("r1", None, time.time())
    assert topics[-1] == "cancel"
    store.unsubscribe(topics.append)
    await store.create_run(new_run("r2"))
    assert topics.count("run") == 1


async def test_a_closed_store_refuses_work(database_url):
    store = open_store(Settings(database_url=database_url))
    with pytest.raises(StoreError):
        await store.get_run("r1")
    async with store:
        await store.create_run(new_run("r1"))
    with pytest.raises(StoreError):
        await store.get_run("r1")
    with pytest.raises(StoreError):
        await store.open()
