"""The `corral` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from .app import App
from .config import Settings
from .errors import CorralError
from .store import open_store
from .store.base import RunStatus

EXIT = {
    RunStatus.SUCCEEDED: 0,
    RunStatus.FAILED: 1,
    RunStatus.CANCELLED: 3,
    RunStatus.TIMED_OUT: 4,
    RunStatus.LIMIT_EXCEEDED: 5,
}


def load_app(spec: str) -> App:
    """`module.path:attribute` to the App it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"corral: expected MODULE:APP, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"corral: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise SystemExit(f"corral: {spec!r} is not a corral.App (got {type(app).__name__})")
    return app


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def configure_app(app: App, args: argparse.Namespace) -> str:
    """Apply the command's flags and the model configuration to a loaded app; returns the line
    that says which models the app uses."""
    app.configure(database_url=args.database_url, config=getattr(args, "config", None))
    from .models import default_models, load_models

    if path := app.settings.config:
        app.set_models(load_models(path, os.environ))
        line = f"model routes from {path}: {', '.join(sorted(app.models))}"
    elif app.has_implicit_default:
        defaults, line = default_models()
        app.set_models(defaults, fill_default=True)
    else:
        line = f"model route 'default': {type(app.models['default']).__name__} (set by the app's code)"
    logging.getLogger("corral").info("%s", line)
    return line


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"corral: {what} is not valid JSON: {exc}") from exc


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(os.environ, database_url=args.database_url)


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str), flush=True)


async def cmd_run(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    configure_app(app, args)
    payload = _json_arg(args.input, "--input")
    async with app:
        run_id = await app.submit(args.agent, payload, session_id=args.session)
        driver = asyncio.create_task(app.drive(run_id))
        async for event in app.watch(run_id):
            _print({"id": event.id, "event": event.type, "data": event.data})
        result = await driver
    _print({"run_id": result.run_id, "status": result.status.value, "output": result.output})
    if not result.ok:
        print(
            f"corral: run {result.run_id} ended {result.status.value}"
            + (f": {result.error.get('message')}" if result.error else ""),
            file=sys.stderr,
        )
    return EXIT.get(result.status, 1)


async def cmd_submit(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    app.configure(database_url=args.database_url)
    async with app:
        print(await app.submit(args.agent, _json_arg(args.input, "--input"), session_id=args.session), flush=True)
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    configure_app(app, args)
    async with app:
        worker = app.worker(args.concurrency)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        logging.getLogger("corral").info(
            "worker %s: %d slot(s), agents %s, store %s",
            worker.id,
            worker.concurrency,
            ", ".join(app.agent_names()),
            redact_url(app.settings.database_url),
        )
        server = None
        if args.metrics_port is not None:
            from .telemetry.metrics import Metrics
            from .telemetry.serve import serve_metrics

            metrics = Metrics()
            app.bus.add_tap(metrics.observe_event)
            metrics.watch_worker(lambda: (len(worker.active), worker.concurrency))
            server = await serve_metrics(app, metrics, args.metrics_host, args.metrics_port)
            logging.getLogger("corral").info("metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        await app.load_models()  # the first run should not wait for the weights, nor find them missing
        print(f"worker {worker.id} ready", flush=True)
        settle_heap()
        try:
            await worker.run()
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
    return 0


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3] if t else "-"


async def cmd_runs_show(args: argparse.Namespace) -> int:
    async with open_store(_settings(args)) as store:
        run = await store.get_run(args.run_id)
        steps = await store.list_steps(args.run_id)
    timeline = [
        {
            "seq": s.seq,
            "kind": s.kind.value,
            "name": s.name,
            "status": s.status.value,
            "attempt": s.attempt,
            "started_at": s.started_at,
            "duration": (s.finished_at - s.started_at) if s.finished_at else None,
            "error": s.error,
        }
        for s in steps
    ]
    if args.json:
        _print(
            {
                "run_id": run.id,
                "session_id": run.session_id,
                "agent": run.agent,
                "status": run.status.value,
                "attempts": run.attempt,
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "output": run.output,
                "error": run.error,
                "steps": timeline,
            }
        )
        return 0
    print(
        f"run      {run.id}\nagent    {run.agent}\nsession  {run.session_id}\nstatus   {run.status.value}\n"
        f"attempts {run.attempt}"
    )
    if run.error:
        print(
            f"error    {run.error.get('type')}: {run.error.get('message')}"
            + (f" (step {run.error['step']})" if run.error.get("step") else "")
        )
    print(f"\n{'seq':<8} {'kind':<8} {'name':<24} {'start':<13} {'duration':>10}  {'status':<10} error")
    for s in timeline:
        dur = f"{s['duration'] * 1000:.1f}ms" if s["duration"] is not None else "-"
        err = f"{s['error'].get('error_type')}: {s['error'].get('message')}" if s["error"] else ""
        print(
            f"{s['seq']:<8} {s['kind']:<8} {s['name'][:24]:<24} {_ts(s['started_at']):<13} {dur:>10}  "
            f"{s['status']:<10} {err}"
        )
    return 0


async def cmd_message(args: argparse.Namespace) -> int:
    payload = _json_arg(args.payload, "the message")
    async with open_store(_settings(args)) as store:
        from ._json import dumps

        msg_id = await store.deliver_message(args.session_id, dumps(payload), None, time.time())
    print(msg_id, flush=True)
    return 0


def _applied_version(migrations: list[Any]) -> int:
    return max((m.version for m in migrations if m.state != "pending"), default=0)


async def _sqlite_version(url: str) -> tuple[int, int]:
    """(the file's schema version, the newest this code knows), read without creating or migrating."""
    from .store.sql import load_migrations
    from .store.sqlite import sqlite_path

    def read() -> int:
        path = sqlite_path(url)
        if not os.path.exists(path):
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    latest = max((v for v, _, _ in load_migrations("sqlite")), default=0)
    return await asyncio.to_thread(read), latest


# The PostgreSQL store has upgrade() and migration_status(); SQLite migrates whenever it opens.
async def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = open_store(_settings(args))
    upgrade = getattr(store, "upgrade", None)
    if upgrade is None:
        async with store:
            pass
        _print({"version": (await _sqlite_version(store.url))[0]})  # type: ignore[attr-defined]
        return 0
    applied = await upgrade()
    _print({"applied": applied, "version": _applied_version(await store.migration_status())})  # type: ignore[attr-defined]
    return 0


async def cmd_db_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = open_store(settings)
    status = getattr(store, "migration_status", None)
    if status is None:
        version, latest = await _sqlite_version(settings.database_url)
        _print({"version": version, "pending": max(0, latest - version)})
        return 0
    migrations = await status()
    _print(
        {
            "version": _applied_version(migrations),
            "pending": sum(m.state == "pending" for m in migrations),
            "migrations": [
                {"version": m.version, "name": m.name, "state": m.state.value, "applied_at": m.applied_at}
                for m in migrations
            ],
        }
    )
    return 0


def _banner(app: App, url: str, key: str | None, models: str) -> str:
    """What `corral serve` prints once it listens: the URL, the key and examples to paste."""
    names = app.agent_names()
    chat = names[0] if names else "AGENT"  # the first registered: the app's own choice of a front door
    shown = key or "$CORRAL_API_KEY"
    body = json.dumps(
        {
            "assistant_id": chat,
            "input": {"messages": [{"role": "user", "content": "Where is my order A-1001?"}]},
            "stream_mode": ["values", "messages-tuple"],
        }
    )
    lines = [
        f"Corral API on {url}  (agents: {', '.join(names)}; OpenAPI: {url}/docs; metrics: {url}/metrics)",
        models,
        f"API key (shown once, keep it): {key}" if key else "API keys: corral keys create --tenant T --principal P",
        "",
        "curl:",
        f"  curl -s {url}/assistants/search -H 'x-api-key: {shown}' -H 'content-type: application/json' -d '{{}}'",
        f"  curl -N {url}/runs/stream -H 'x-api-key: {shown}' -H 'content-type: application/json' \\",
        f"       -d '{body}'",
        "",
        "langgraph-sdk (pip install langgraph-sdk):",
        "  import asyncio",
        "  from langgraph_sdk import get_client",
        "",
        "  async def main():",
        f'      client = get_client(url="{url}", api_key="{shown}")',
        "      thread = await client.threads.create()",
        "      async for part in client.runs.stream(",
        f'          thread["thread_id"], "{chat}", stream_mode="messages-tuple",',
        '          input={"messages": [{"role": "user", "content": "Where is my order A-1001?"}]},',
        "      ):",
        "          print(part.event, part.data)",
        "",
        "  asyncio.run(main())",
    ]
    return "\n".join(lines)


async def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_api, create_key

    app = load_app(args.app)
    if args.no_worker:  # this process executes no run, so it needs no model
        app.configure(database_url=args.database_url)
        models = "models: none here (--no-worker); the workers' own"
    else:
        models = configure_app(app, args)
    key = None
    if args.dev:
        async with open_store(app.settings) as store:
            key = await create_key(store, app.settings.tenant, "dev", ("admin",))
    api = create_api(app, worker=not args.no_worker)
    config = uvicorn.Config(
        api,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_level="debug" if args.verbose else "info",
        timeout_graceful_shutdown=max(1, int(app.settings.drain_grace)),  # open streams reconnect elsewhere
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        print(_banner(app, f"http://{args.host}:{args.port}", key, models), flush=True)

    announcer = asyncio.create_task(announce())
    settle_heap()
    try:
        await server.serve()
    finally:
        announcer.cancel()
    return 0


async def cmd_keys_create(args: argparse.Namespace) -> int:
    from .api import create_key

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    async with open_store(_settings(args)) as store:
        key = await create_key(store, args.tenant, args.principal, roles)
    print(key, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    default_db = os.environ.get("CORRAL_DATABASE_URL") or "sqlite:///./corral.db"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", default=default_db, help="store URL (default: $CORRAL_DATABASE_URL or sqlite:///./corral.db)"
    )
    common.add_argument("--config", default=None, help="TOML file of model routes (default: $CORRAL_CONFIG)")
    parser = argparse.ArgumentParser(prog="corral", description="Corral: a durable runtime for LLM agents")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[common], help="run one run in this process, printing its events")
    p.add_argument("app", help="MODULE:APP")
    p.add_argument("agent")
    p.add_argument("--input", default="null", help="the run's input as JSON")
    p.add_argument("--session", default=None, help="session id (default: a new session)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", parents=[common], help="queue a run for workers and print its id")
    p.add_argument("app")
    p.add_argument("agent")
    p.add_argument("--input", default="null")
    p.add_argument("--session", default=None)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("worker", parents=[common], help="execute queued runs until SIGTERM/SIGINT")
    p.add_argument("app")
    p.add_argument("--concurrency", type=int, default=None, help="runs at once (default: $CORRAL_CONCURRENCY or 10)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics and /ok on this port")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port (default 0.0.0.0)")  # noqa: S104
    p.set_defaults(func=cmd_worker)

    runs = sub.add_parser("runs", help="inspect runs").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("show", parents=[common], help="status, attempts and the step timeline of a run")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("message", parents=[common], help="deliver a message to a session")
    p.add_argument("session_id")
    p.add_argument("payload", help="the message as JSON")
    p.set_defaults(func=cmd_message)

    p = sub.add_parser("serve", parents=[common], help="serve the LangGraph-compatible HTTP API (and run a worker)")
    p.add_argument("app", help="MODULE:APP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--dev", action="store_true", help="create an API key for local use and print it")
    p.add_argument("--no-worker", action="store_true", help="serve only; `corral worker` processes execute runs")
    p.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="create an API key and print it (shown only once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--principal", required=True)
    p.add_argument("--roles", default="", help="comma-separated roles, e.g. admin,support")
    p.set_defaults(func=cmd_keys_create)

    db = sub.add_parser("db", help="the database schema").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", parents=[common], help="apply pending migrations (safe while others start)")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("status", parents=[common], help="the schema version and the applied and pending migrations")
    p.set_defaults(func=cmd_db_status)
    return parser


def settle_heap() -> None:
    """For a long-running process, once it has loaded: put everything alive now (modules, the app,
    the API's routes and schemas) out of the cyclic collector's sight, and collect the young
    generation less often. In a loaded server, full collections of that heap took ~200 ms each,
    several times a minute, and every stream stalled for them; tokens allocate fast enough that
    the default threshold (700 objects) ran the young generation hundreds of times a second.

    Also hand the GIL between threads every millisecond, not every five: a thread that wants it
    back (SQLite's, after each statement) waits at most that long while the event loop is busy,
    and the loop waits at most that long while SQLite's thread encodes a batch of events."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    sys.setswitchinterval(0.001)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency on Linux and macOS): the server relays every
    token event of every stream through the loop, and uvloop's does it at a fraction of the cost.
    `CORRAL_EVENT_LOOP=asyncio` keeps the standard loop."""
    if os.environ.get("CORRAL_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(args.func(args))
    except CorralError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
