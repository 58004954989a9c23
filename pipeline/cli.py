"""The `poststelle` command.

    poststelle up                      run the local stack in the foreground (Ctrl-C stops it)
    poststelle status [--wait SECS]    is every component up? (exit 0 yes, 1 no: names the missing)
    poststelle sql "SELECT ..."        query the analytics store, print a table
    poststelle queue [retry ID|--all]  deferred deliveries; try them now (postqueue -p / -f)
    poststelle quarantine list|get     held parts and quarantined messages; extract one (get ID [PART] -o FILE)
    poststelle stop|start COMPONENT    hold a component of the running stack down / release it
    poststelle run COMPONENT           one process: ingress | stage:NAME | sink:NAME | retry | bounce | verdict
    poststelle config check            validate the configuration and print it
    poststelle schemas export [DIR]    write the events' JSON Schema files
    poststelle list add|remove|show    the site's own block and allow lists (pipeline/sitelist_cli.py)
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from pipeline.settings import REPO_ROOT, ConfigError, Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("poststelle")
LOCAL_CONFIG = REPO_ROOT / "deploy/local/poststelle.toml"


def _setup_logging(component: str) -> None:
    level = os.environ.get("POSTSTELLE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s {component}[%(process)d] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("POSTSTELLE_CONFIG") or (LOCAL_CONFIG if LOCAL_CONFIG.exists() else None)
    return load_settings(path)


def _install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


# -- up / status ---------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from pipeline.supervisor import Supervisor, infrastructure_specs, pipeline_specs

    config_env = {"POSTSTELLE_CONFIG": str(settings.source)} if settings.source else {}

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop_handlers(stop)
        supervisor = Supervisor(settings, infrastructure_specs(settings), pipeline_specs(settings), env=config_env)
        announcer = asyncio.create_task(_announce_when_ready(supervisor, settings))
        try:
            await supervisor.run(stop)
        finally:
            announcer.cancel()
        print("poststelle stopped", flush=True)

    asyncio.run(main())
    return 0


async def _announce_when_ready(supervisor, settings: Settings) -> None:
    while not supervisor.all_ready():
        await asyncio.sleep(0.3)
    i, k, a = settings.ingress, settings.kafka, settings.sinks.analytics
    parts = [f"smtp {i.host}:{i.port}", f"kafka {k.bootstrap}"]
    if settings.local.dovecot:
        parts.append(f"lmtp {settings.sinks.lmtp.host}:{settings.sinks.lmtp.port}")
    if settings.local.smarthost:
        parts.append(f"smarthost {settings.sinks.smarthost.host}:{settings.sinks.smarthost.port}")
    if settings.local.slapd:
        parts.append(f"ldap {settings.ldap.host}:{settings.ldap.port}")
    if settings.local.nsd:
        parts.append(f"dns {settings.dns.nameserver}:{settings.dns.port}")
    if settings.local.clamd:
        parts.append(f"clamd {settings.local.clamd_host}:{settings.local.clamd_port}")
    if "analytics" in settings.supervisor.sinks and not a.url:
        parts.append(f"analytics {a.query_host}:{a.query_port}")
    print(f"poststelle ready: {', '.join(parts)} (state in {settings.home})", flush=True)


def _read_status(settings: Settings) -> dict | None:
    from pipeline.supervisor import status_file

    try:
        status = orjson.loads(status_file(settings).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    try:
        os.kill(status["supervisor_pid"], 0)
    except (ProcessLookupError, KeyError):
        return None
    return status


def _not_ready(status: dict | None) -> list[str]:
    if status is None:
        return ["supervisor (poststelle up is not running)"]
    return [name for name, c in status["components"].items() if c["state"] != "ready"]


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    deadline = time.monotonic() + args.wait
    while True:
        status = _read_status(settings)
        missing = _not_ready(status)
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if status is not None:
        for name, c in status["components"].items():
            print(f"{name:24} {c['state']:10} pid={c['pid']} restarts={c['restarts']}")
    if missing:
        print(f"not ready: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("all components ready")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    """`stop NAME` holds a component down; `start NAME` releases it (the supervisor acts on it)."""
    from pipeline.supervisor import hold_file

    settings = _settings(args)
    status = _read_status(settings)
    if status is None:
        print("poststelle up is not running", file=sys.stderr)
        return 1
    if args.component not in status["components"]:
        print(f"no component {args.component!r} (known: {', '.join(status['components'])})", file=sys.stderr)
        return 1
    path = hold_file(settings, args.component)
    if args.command == "stop":
        path.touch()
    else:
        path.unlink(missing_ok=True)
    print(f"{args.component}: {'held (stopping)' if args.command == 'stop' else 'released (starting)'}")
    return 0


# -- run one component -------------------------------------------------------------------------


def _component(settings: Settings, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    instance = os.environ.get("POSTSTELLE_INSTANCE", "0")
    if name == "ingress":
        from ingress.server import run_ingress

        return run_ingress
    if name.startswith("stage:"):
        from pipeline.runner import run_stage

        stage = name.split(":", 1)[1]
        if stage not in settings.topology.stages:
            raise ConfigError(f"{name}: stage is not in topology.stages")
        return lambda s, stop, ready: run_stage(s, stage, stop, ready, instance=instance)
    if name == "sink:lmtp":
        from consumers.sinks.lmtp import run_lmtp_sink

        return lambda s, stop, ready: run_lmtp_sink(s, stop, ready, instance=instance)
    if name == "sink:smarthost":
        from consumers.sinks.smarthost import run_smarthost_sink

        return lambda s, stop, ready: run_smarthost_sink(s, stop, ready, instance=instance)
    if name == "sink:analytics":
        from consumers.sinks.analytics import run_analytics_sink

        return run_analytics_sink
    if name == "retry":
        from consumers.sinks.retry import run_retry_service

        return lambda s, stop, ready: run_retry_service(s, stop, ready, instance=instance)
    if name == "verdict":
        from consumers.sinks.verdict import run_verdict_service

        return lambda s, stop, ready: run_verdict_service(s, stop, ready, instance=instance)
    if name == "bounce":
        from consumers.sinks.dsn import run_bounce_service

        return lambda s, stop, ready: run_bounce_service(s, stop, ready, instance=instance)
    raise ConfigError(f"unknown component {name!r} (ingress, stage:NAME, sink:lmtp, sink:smarthost, "
                      "sink:analytics, retry, bounce, verdict)")


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.component)
    settings = _settings(args)
    component = _component(settings, args.component)
    from pipeline.supervisor import ready_file

    def on_ready() -> None:
        path = ready_file(settings, args.component, os.environ.get("POSTSTELLE_INSTANCE", "0"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop_handlers(stop)
        await component(settings, stop, on_ready)

    asyncio.run(main())
    return 0


# -- sql, config, schemas ------------------------------------------------------------------------


def cmd_sql(args: argparse.Namespace) -> int:
    from consumers.sinks.analytics import format_table, run_sql

    settings = _settings(args)
    try:
        columns, rows = run_sql(settings, args.query)
    except Exception as exc:  # a ClickHouse error is the user's to read, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"columns": columns, "rows": rows}, default=str).decode())
    else:
        print(format_table(columns, rows))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """List deferred deliveries, or (`queue retry ID|--all`) try them now."""
    from consumers.sinks.analytics import format_table
    from consumers.sinks.queue import deferred_deliveries, queue_rows, retry_now

    settings = _settings(args)
    if args.action == "retry":
        if not args.all and not args.ids:
            print("poststelle queue retry: name message ids or --all", file=sys.stderr)
            return 2
        chosen = asyncio.run(retry_now(settings, None if args.all else set(args.ids)))
        print(f"{len(chosen)} deferred deliveries sent for an immediate attempt")
        return 0
    columns, rows = queue_rows(asyncio.run(deferred_deliveries(settings)))
    print(format_table(columns, rows) if rows else "queue is empty")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List held parts and quarantined messages, or (`get ID [PART] -o FILE`) extract one."""
    from consumers.sinks.analytics import format_table
    from pipeline.blobstore import BlobNotFound, FileBlobStore
    from pipeline.quarantine import QuarantineError, extract, find_entry, quarantine_rows, read_quarantine

    settings = _settings(args)
    entries = asyncio.run(read_quarantine(settings))
    if args.action == "list":
        columns, rows = quarantine_rows(entries)
        if args.json:
            print(orjson.dumps({"columns": columns, "rows": rows}).decode())
        else:
            print(format_table(columns, rows) if rows else "quarantine is empty")
        return 0
    if not args.message_id or not args.output:
        print("poststelle quarantine get: MESSAGE_ID [PART] -o FILE", file=sys.stderr)
        return 2
    try:
        entry = find_entry(entries, args.message_id, args.part)
        data = extract(FileBlobStore(settings.home / "blobs"), entry, args.part)
    except (QuarantineError, BlobNotFound) as exc:
        print(f"poststelle quarantine get: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(args.output, "wb") as fh:
            fh.write(data)
        print(f"{len(data)} bytes written to {args.output}", file=sys.stderr)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    data = dataclasses.asdict(settings)
    data["stages"] = {k: dataclasses.asdict(v) for k, v in settings.stages.items()}
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"config OK ({settings.source or 'defaults'})", file=sys.stderr)
    return 0


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from schemas.jsonschema import export_all

    for path in export_all(args.directory):
        print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipeline.sitelist_cli import run_list_command

    return run_list_command(_settings(args), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poststelle", description="event-sourced mail gateway")
    parser.add_argument("--config", "-c", help="TOML config (default: $POSTSTELLE_CONFIG, else the local stack's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the local stack").set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="are all components up?")
    status.add_argument("--wait", type=float, default=0.0, metavar="SECS", help="wait up to SECS for readiness")
    status.set_defaults(func=cmd_status)
    for verb, text in (("stop", "hold a component of the running stack down"),
                       ("start", "release a held component")):
        hold = sub.add_parser(verb, help=text)
        hold.add_argument("component")
        hold.set_defaults(func=cmd_hold)
    run = sub.add_parser("run", help="run one component in the foreground")
    run.add_argument("component")
    run.set_defaults(func=cmd_run)
    sql = sub.add_parser("sql", help="query the analytics store")
    sql.add_argument("query")
    sql.add_argument("--json", action="store_true", help="print {columns, rows} as JSON")
    sql.set_defaults(func=cmd_sql)
    queue = sub.add_parser("queue", help="deferred deliveries (like postqueue -p / -f)")
    queue.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    queue.add_argument("ids", nargs="*", metavar="MESSAGE_ID")
    queue.add_argument("--all", action="store_true", help="with retry: every deferred delivery")
    queue.set_defaults(func=cmd_queue)
    quarantine = sub.add_parser("quarantine", help="held parts and quarantined messages")
    quarantine.add_argument("action", nargs="?", choices=["list", "get"], default="list")
    quarantine.add_argument("message_id", nargs="?", default="")
    quarantine.add_argument("part", nargs="?", default="", help="MIME part number (default: the whole message)")
    quarantine.add_argument("-o", "--output", help="with get: write to FILE ('-': stdout)")
    quarantine.add_argument("--json", action="store_true", help="with list: print {columns, rows} as JSON")
    quarantine.set_defaults(func=cmd_quarantine)
    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    config.add_parser("check", help="validate and print the configuration").set_defaults(func=cmd_config_check)
    schemas = sub.add_parser("schemas", help="event schemas").add_subparsers(dest="action", required=True)
    export = schemas.add_parser("export", help="write JSON Schema files")
    export.add_argument("directory", nargs="?", default=None)
    export.set_defaults(func=cmd_schemas_export)
    from pipeline.sitelist_cli import add_parser as add_list_parser

    add_list_parser(sub, cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"poststelle: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
