"""What only the PostgreSQL store does: migrations, LISTEN/NOTIFY, tenant fairness, and surviving
connections that the server drops."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator

import pytest

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - depends on the installed extras
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("psycopg is not installed (pip install corral[postgres])", allow_module_level=True)

from corral import App, Context, RunStatus, agent
from corral.cli import main
from corral.config import Settings
from corral.errors import ConfigError, StoreError
from corral.store.base import Event, Fence, NewRun, StepKind, StepRecord, StepStatus
from corral.store.postgres import MigrationState, PostgresStore, parse_url
from corral.store.sql import load_migrations
from helpers import within

# The schema that replaying every migration must produce: table -> column -> (type, nullable).
DECLARED = {
    "corral_migrations": {
        "version": ("integer", False),
        "name": ("text", False),
        "checksum": ("text", False),
        "applied_at": ("timestamp with time zone", False),
    },
    "sessions": {
        "id": ("text", False),
        "tenant": ("text", False),
        "principal": ("text", True),
        "metadata": ("jsonb", False),
        "created_at": ("double precision", False),
        "values": ("text", False),
        "updated_at": ("double precision", False),
    },
    "runs": {
        "seq": ("bigint", False),
        "id": ("text", False),
        "session_id": ("text", False),
        "tenant": ("text", False),
        "principal": ("text", True),
        "roles": ("jsonb", False),
        "agent": ("text", False),
        "agent_version": ("text", False),
        "input": ("text", False),
        "limits": ("jsonb", False),
        "metadata": ("jsonb", False),
        "status": ("text", False),
        "output": ("text", True),
        "error": ("jsonb", True),
        "attempt": ("integer", False),
        "lease_owner": ("text", True),
        "lease_expires_at": ("double precision", True),
        "wake_at": ("double precision", True),
        "wait_kind": ("text", True),
        "time_used": ("double precision", False),
        "cancel_requested": ("boolean", False),
        "created_at": ("double precision", False),
        "started_at": ("double precision", True),
        "finished_at": ("double precision", True),
    },
    "steps": {
        "run_id": ("text", False),
        "seq": ("text", False),
        "kind": ("text", False),
        "name": ("text", False),
        "input_hash": ("text", False),
        "status": ("text", False),
        "result": ("text", True),
        "error": ("jsonb", True),
        "attempt": ("integer", False),
        "started_at": ("double precision", False),
        "finished_at": ("double precision", True),
    },
    "events": {
        "run_id": ("text", False),
        "id": ("bigint", False),
        "type": ("text", False),
        "data": ("text", False),
        "created_at": ("double precision", False),
    },
    "inbox": {
        "id": ("bigint", False),
        "session_id": ("text", False),
        "payload": ("text", False),
        "created_at": ("double precision", False),
        "consumed_by": ("text", True),
        "consumed_seq": ("text", True),
    },
    "checkpoints": {
        "id": ("bigint", False),
        "session_id": ("text", False),
        "run_id": ("text", True),
        "values": ("text", False),
        "metadata": ("jsonb", False),
        "created_at": ("double precision", False),
    },
    "items": {
        "tenant": ("text", False),
        "namespace": ("text", False),
        "key": ("text", False),
        "value": ("text", False),
        "created_at": ("double precision", False),
        "updated_at": ("double precision", False),
    },
    "api_keys": {
        "id": ("text", False),
        "key_hash": ("text", False),
        "tenant": ("text", False),
        "principal": ("text", False),
        "roles": ("jsonb", False),
        "created_at": ("double precision", False),
        "revoked_at": ("double precision", True),
    },
}
DECLARED_INDEXES = {
    "runs_queued",
    "runs_waiting",
    "runs_leased",
    "runs_session",
    "runs_active",
    "runs_tenant_started",
    "runs_finished",
    "inbox_pending",
    "sessions_tenant",
    "checkpoints_session",
}


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


def base_of(url: str) -> str:
    return parse_url(url).conninfo


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection of the test's own, outside any store, in the test's schema."""
    async with await psycopg.AsyncConnection.connect(base_of(postgres_url), autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema_of(postgres_url))))
        yield conn


def new_run(run_id: str, *, tenant: str = "acme", session: str | None = None) -> NewRun:
    return NewRun(
        id=run_id,
        session_id=session or f"s-{run_id}",
        tenant=tenant,
        principal=None,
        roles=(),
        agent="a",
        agent_version="v1",
        input_json="null",
        limits={},
        created_at=time.time(),
    )


# migrations ---------------------------------------------------------------------------------
async def test_replaying_every_migration_gives_the_declared_schema(postgres_url, admin):
    async with PostgresStore(postgres_url):
        pass
    schema = schema_of(postgres_url)
    rows = await (
        await admin.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s",
            (schema,),
        )
    ).fetchall()
    actual: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, data_type, nullable in rows:
        actual.setdefault(table, {})[column] = (data_type, nullable == "YES")
    assert actual == DECLARED
    indexes = {
        r[0]
        for r in await (
            await admin.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))
        ).fetchall()
    }
    assert DECLARED_INDEXES <= indexes
    versions = [r[0] for r in await (await admin.execute("SELECT version FROM corral_migrations")).fetchall()]
    assert versions == [v for v, _, _ in load_migrations("postgres")]


def test_both_backends_declare_the_same_tables_and_columns(sqlite_url):
    from corral.store.sqlite import SQLiteStore

    async def create() -> None:
        async with SQLiteStore(sqlite_url):
            pass

    asyncio.run(create())
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        names = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        tables = {r[0] for r in conn.execute(names)}
        # SQLite keeps its schema version in PRAGMA user_version, not in a table
        assert tables == DECLARED.keys() - {"corral_migrations"}
        for table in tables:
            assert [r[1] for r in conn.execute(f"PRAGMA table_info({table})")] == list(DECLARED[table]), table
    finally:
        conn.close()


async def test_upgrade_and_status_work_without_opening_the_store(postgres_url):
    store = PostgresStore(postgres_url)
    status = await store.migration_status()
    assert status and {m.state for m in status} == {MigrationState.PENDING}
    assert await store.upgrade() == [m.version for m in status]
    status = await store.migration_status()
    assert {m.state for m in status} == {MigrationState.APPLIED} and all(m.applied_at for m in status)
    assert await store.upgrade() == []


async def test_processes_starting_together_apply_each_migration_once(postgres_url, admin):
    stores = [PostgresStore(postgres_url) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        rows = await (
            await admin.execute("SELECT version, count(*) FROM corral_migrations GROUP BY version")
        ).fetchall()
        assert [n for _, n in rows] == [1] * len(load_migrations("postgres"))
        await stores[0].create_run(new_run("r1"))
        assert (await stores[4].get_run("r1")).status is RunStatus.QUEUED
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_status_reports_changed_and_unknown_migrations(postgres_url, admin):
    await PostgresStore(postgres_url).upgrade()
    await admin.execute("UPDATE corral_migrations SET checksum = 'edited' WHERE version = 1")
    await admin.execute("INSERT INTO corral_migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')")
    states = {m.version: m.state for m in await PostgresStore(postgres_url).migration_status()}
    assert states[1] is MigrationState.CHANGED and states[9999] is MigrationState.UNKNOWN


def test_cli_db_status_and_upgrade(postgres_url, capsys):
    def run(*args: str) -> dict:
        assert main(["db", *args, "--database-url", postgres_url]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    before = run("status")
    assert before["version"] == 0 and {m["state"] for m in before["migrations"]} == {"pending"}
    upgraded = run("upgrade")
    latest = max(v for v, _, _ in load_migrations("postgres"))
    assert upgraded["applied"] == list(range(1, latest + 1)) and upgraded["version"] == latest
    after = run("status")
    assert after["version"] == latest and {m["state"] for m in after["migrations"]} == {"applied"}
    assert run("upgrade")["applied"] == []


def test_cli_db_commands_on_sqlite(sqlite_url, capsys):
    latest = max(v for v, _, _ in load_migrations("sqlite"))
    assert main(["db", "status", "--database-url", sqlite_url]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": 0, "pending": latest}
    assert main(["db", "upgrade", "--database-url", sqlite_url]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == latest
    assert main(["db", "status", "--database-url", sqlite_url]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": latest, "pending": 0}


# URLs ---------------------------------------------------------------------------------------
def test_corral_options_are_taken_out_of_the_url_and_checked():
    opts = parse_url("postgresql://u:p@db:5432/app?sslmode=require&schema=tenant_a&pool_max_size=20")
    assert opts.schema == "tenant_a" and (opts.min_size, opts.max_size) == (1, 20)
    assert "schema" not in opts.conninfo and "pool_max_size" not in opts.conninfo
    assert "sslmode=require" in opts.conninfo and "application_name=corral" in opts.conninfo
    assert "application_name=mine" in parse_url("postgres://db/app?application_name=mine").conninfo
    socket = parse_url("postgresql:///app?schema=s1").conninfo  # no host: libpq's Unix socket
    assert socket.startswith("postgresql:///app?") and "schema" not in socket
    import psycopg.conninfo

    assert psycopg.conninfo.conninfo_to_dict(socket)["dbname"] == "app"
    for bad in ("schema=Robert'); DROP", "schema=UPPER", "pool_max_size=0", "pool_min_size=x"):
        with pytest.raises(ConfigError):
            parse_url(f"postgresql://db/app?{bad}")


# errors -------------------------------------------------------------------------------------
async def test_an_unreachable_server_is_a_store_error():
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=1", retry_seconds=0.3)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert isinstance(info.value.__cause__, psycopg.Error)


async def test_database_errors_are_translated_at_the_boundary(postgres_url, admin):
    async with PostgresStore(postgres_url) as store:
        await store.create_run(new_run("r1"))
        await admin.execute("DROP TABLE runs CASCADE")
        with pytest.raises(StoreError) as info:
            await store.get_run("r1")
        assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)


KILL_AT_COMMIT = """
CREATE SEQUENCE kill_count;
CREATE FUNCTION kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('kill_count') = 1 THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
    END IF;
    RETURN NULL;
END $$;
"""


async def kill_first_commit_on(admin: psycopg.AsyncConnection, table: str) -> None:
    """The first transaction that writes `table` loses its connection during COMMIT."""
    await admin.execute(KILL_AT_COMMIT)
    await admin.execute(
        sql.SQL(
            "CREATE CONSTRAINT TRIGGER kill_at_commit AFTER INSERT ON {} DEFERRABLE INITIALLY DEFERRED"
            " FOR EACH ROW EXECUTE FUNCTION kill_at_commit()"
        ).format(sql.Identifier(table))
    )


async def test_a_step_cut_off_during_commit_is_verified_then_written_once(postgres_url, admin):
    async with PostgresStore(postgres_url) as store:
        await store.create_run(new_run("r1"))
        await store.claim_runs("w1", 1, ["a"], 30, time.time())
        await kill_first_commit_on(admin, "steps")
        now = time.time()
        rec = StepRecord("r1", "1", StepKind.STEP, "s", "h", StepStatus.COMPLETED, "42", None, 1, now, now)
        await store.record_step(Fence("r1", 1), rec, [Event("r1", 1, "custom", {})])
        assert (await (await admin.execute("SELECT last_value FROM kill_count")).fetchone())[0] == 2
        assert [s.result_json for s in await store.list_steps("r1")] == ["42"]
        assert [e.id for e in await store.list_events("r1")] == [1]


async def test_a_message_cut_off_during_commit_is_a_store_error_and_not_delivered_twice(postgres_url, admin):
    async with PostgresStore(postgres_url) as store:
        await store.create_run(new_run("r1", session="s1"))
        await kill_first_commit_on(admin, "inbox")
        with pytest.raises(StoreError, match="unknown"):
            await store.deliver_message("s1", '"hi"', None, time.time())
        assert (await (await admin.execute("SELECT count(*) FROM inbox")).fetchone())[0] == 0
        assert await store.deliver_message("s1", '"hi"', None, time.time()) > 0  # the next one goes through


async def test_stale_pooled_connections_are_replaced(postgres_url, admin):
    app_name = f"corral_{uuid.uuid4().hex[:8]}"
    async with PostgresStore(f"{postgres_url}&application_name={app_name}&pool_min_size=3") as store:
        await store.create_run(new_run("r1"))
        killed = await terminate(admin, app_name)
        assert killed >= 3  # the pool's connections and the listener's
        started = time.monotonic()
        assert (await store.get_run("r1")).status is RunStatus.QUEUED
        assert time.monotonic() - started < 1.0  # found dead and replaced at once, no backing off
        for _ in range(5):
            assert (await store.get_run("r1")).status is RunStatus.QUEUED


async def test_connections_on_descriptors_above_1024_are_used(postgres_url, tmp_path):
    # An API process holding a thousand client sockets opens its later connections on such
    # descriptors; select() cannot watch them, so the liveness check must not use it.
    held = [open(tmp_path / "held", "wb") for _ in range(1100)]
    try:
        async with PostgresStore(f"{postgres_url}&pool_min_size=1&pool_max_size=1") as store:
            await store.create_run(new_run("r1"))
            started = time.monotonic()
            for _ in range(20):
                assert (await store.get_run("r1")).status is RunStatus.QUEUED
            assert time.monotonic() - started < 2.0  # the one connection is reused, not discarded each time
            assert store._db._pool.get_stats().get("connections_lost", 0) == 0
    finally:
        for f in held:
            f.close()


async def terminate(admin: psycopg.AsyncConnection, app_name: str) -> int:
    rows = await (
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        )
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# notifications ------------------------------------------------------------------------------
async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.005)


async def test_notifications_wake_listeners_in_other_processes_in_milliseconds(postgres_url, admin):
    app_name = f"corral_{uuid.uuid4().hex[:8]}"
    async with PostgresStore(f"{postgres_url}&application_name={app_name}") as a, PostgresStore(postgres_url) as b:
        heard: list[str] = []
        a.subscribe(heard.append)
        started = time.monotonic()
        await b.create_run(new_run("r1", session="s1"))
        await eventually(lambda: heard == ["run"])
        assert time.monotonic() - started < 0.5
        await b.deliver_message("s1", '"hi"', None, time.time())
        await eventually(lambda: heard[-1:] == ["message"])
        await b.request_cancel("r1", None, time.time())
        await eventually(lambda: heard[-1:] == ["cancel"])

        heard.clear()
        await a.create_run(new_run("r2"))  # its own write: told at once, and not twice
        assert heard == ["run"]
        await asyncio.sleep(0.3)
        assert heard == ["run"]

        await terminate(admin, app_name)  # the listener reconnects by itself
        await eventually(lambda: "message" in heard)  # it wakes everyone after a reconnect
        heard.clear()
        await b.create_run(new_run("r3"))
        await eventually(lambda: heard == ["run"])


# fairness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("slots", [1, 4])
async def test_one_tenants_burst_does_not_starve_another(postgres_url, slots):
    async with PostgresStore(postgres_url) as store:
        for i in range(200):
            await store.create_run(new_run(f"A{i:03}", tenant="A"))
        for i in range(5):
            await store.create_run(new_run(f"B{i}", tenant="B"))
        started: list[str] = []
        running: list[Fence] = []
        while len(started) < 205:
            claims = await store.claim_runs("w", slots - len(running), ["a"], 30, time.time())
            assert claims, "a free slot and queued runs, but nothing claimed"
            started += [c.run.id for c in claims]
            running += [Fence(c.run.id, c.run.attempt) for c in claims]
            done = running.pop(0)
            await store.finish_run(done, RunStatus.SUCCEEDED, "null", None, 0.0, [])
        b_positions = [i for i, rid in enumerate(started) if rid.startswith("B")]
        assert len(b_positions) == 5 and max(b_positions) < 2 * 5 + slots, b_positions
        a_order = [rid for rid in started if rid.startswith("A")]
        assert a_order == sorted(a_order)  # within a tenant, still arrival order


# surviving a server that drops every connection -----------------------------------------------
@agent(name="twenty")
async def twenty(ctx: Context, input: dict) -> int:
    total = 0
    for i in range(20):
        total += await ctx.step("add", _slow_identity, i)
    return total


async def _slow_identity(i: int) -> int:
    await asyncio.sleep(0.03)
    return i


async def test_runs_finish_when_every_connection_is_terminated_mid_workload(postgres_url, admin, caplog):
    app_name = f"corral_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=f"{postgres_url}&application_name={app_name}",
        lease_seconds=2.0,
        poll_interval=0.01,
        poll_max=0.2,
    )

    async def workload() -> None:
        async with App([twenty], settings=settings) as app:
            run_ids = [await app.submit("twenty", {}) for _ in range(3)]
            worker = app.worker(concurrency=3)
            task = asyncio.create_task(worker.run())
            killed = 0
            deadline = time.monotonic() + 60
            while not all([(await app.get_run(rid)).status.terminal for rid in run_ids]):
                assert time.monotonic() < deadline, "the runs did not finish"
                killed += await terminate(admin, app_name)  # every connection of the app, again and again
                await asyncio.sleep(0.05)
            worker.stop()
            await task
            assert killed >= 10
            for rid in run_ids:
                run = await app.get_run(rid)
                assert run.status is RunStatus.SUCCEEDED and run.output == sum(range(20)), run.error
                steps = await app.steps(rid)
                assert len(steps) == 20 and all(s.result_json is not None for s in steps)

    await within(120, workload())
    leaked = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], psycopg.Error)]
    assert not leaked, "a psycopg error escaped the store"
    assert not [r for r in caplog.records if "runner failed" in r.getMessage()]
