"""`poststelle up | status | stop | start | run`: the local stack, its state, and one component by hand."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import orjson

from pipeline import eventloop
from pipeline.cli.common import check_stages, install_stop_handlers, settings_of, setup_logging
from pipeline.cli.components import component, consumer_groups, metrics_endpoints, metrics_port, pipeline_specs
from pipeline.settings import ConfigError, Settings

__all__ = ["add_parsers", "ready_line"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("up", help="run the local stack in the foreground (Ctrl-C stops it)").set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="is every component up?")
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


# -- up ------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    check_stages(settings)  # a broken rule file stops `up` here, with its file, line and reason
    from pipeline.localstack import local_services
    from pipeline.supervisor import Supervisor

    config_env = {"POSTSTELLE_CONFIG": str(settings.source)} if settings.source else {}

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        supervisor = Supervisor(settings, local_services(settings), pipeline_specs(settings), env=config_env)
        announcer = asyncio.create_task(_announce_when_ready(supervisor, settings))
        try:
            await supervisor.run(stop)
        finally:
            announcer.cancel()
        print("poststelle stopped", flush=True)

    asyncio.run(main())
    return 0


def ready_line(settings: Settings) -> str:
    """The line `poststelle up` prints once every component is ready (the README shows it)."""
    i, k, a = settings.ingress, settings.kafka, settings.sinks.analytics
    parts = [f"smtp {i.host}:{i.port}"]
    sub = settings.submission
    if sub.enabled and sub.port:
        parts.append(f"submission {sub.host}:{sub.port}")
    if sub.enabled and sub.tls_port:
        parts.append(f"submissions {sub.host}:{sub.tls_port}")
    parts.append(f"kafka {k.bootstrap}")
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
    if settings.supervisor.run_stages:  # the quarantine portal runs with the stages
        parts.append(f"portal {settings.web.url}")
    return f"poststelle ready: {', '.join(parts)} (state in {settings.home})"


async def _announce_when_ready(supervisor, settings: Settings) -> None:
    while not supervisor.all_ready():
        await asyncio.sleep(0.3)
    print(ready_line(settings), flush=True)
    if settings.metrics.enabled:
        shown = ", ".join(f"{name} {url}" for name, url in metrics_endpoints(settings).items())
        print(f"metrics: {shown}", flush=True)


# -- status, stop, start ---------------------------------------------------------------------------


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
    settings = settings_of(args)
    deadline = time.monotonic() + args.wait
    while True:
        status = _read_status(settings)
        missing = _not_ready(status)
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if status is not None:
        # a group's lag on its component's line (the processes `<name>.<k>` of one component share it)
        groups, lags = consumer_groups(settings), _lags(settings)
        endpoints = metrics_endpoints(settings) if settings.metrics.enabled else {}
        for name, c in status["components"].items():
            extra = f" lag={lags.get(name, '?')}" if name in groups else ""
            extra += f" metrics={endpoints[name]}" if name in endpoints else ""
            print(f"{name:24} {c['state']:17} pid={c['pid']} restarts={c['restarts']}{extra}")
    if missing:
        print(f"not ready: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("all components ready")
    return 0


def _lags(settings: Settings) -> dict[str, int]:
    """Each consumer component's lag, from the broker; {} (shown as ``lag=?``) when it does not answer."""
    from pipeline.lag import group_lags

    groups = consumer_groups(settings)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a broker away is said once, below
    try:
        by_group = asyncio.run(group_lags(settings.kafka, {g: topics for g, topics in groups.values()}, timeout=5.0))
    except Exception as exc:  # the broker is away or slow: the states are still worth printing
        print(f"lag unknown: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {}
    return {name: by_group[group] for name, (group, _) in groups.items()}


def cmd_hold(args: argparse.Namespace) -> int:
    """`stop NAME` holds a component down; `start NAME` releases it (the supervisor acts on it)."""
    from pipeline.supervisor import hold_file

    settings = settings_of(args)
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


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.component)
    settings = settings_of(args)
    instance = os.environ.get("POSTSTELLE_INSTANCE", "0")
    chosen = component(settings, args.component)
    from pipeline.broker import ClientLogRepeats, Stopping, watch
    from pipeline.bus import MetadataProbe
    from pipeline.metrics import serving_metrics
    from pipeline.supervisor import ready_file, state_file

    def on_ready() -> None:
        path = ready_file(settings, args.component, instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        k = settings.kafka
        # a component waits for the broker instead of exiting, and says so (pipeline/broker.py)
        watch().configure(bootstrap=k.bootstrap, backoff_initial=k.reconnect_backoff_initial,
                          backoff_max=k.reconnect_backoff_max, state_file=state_file(settings, args.component, instance),
                          stop=stop)
        for handler in logging.getLogger().handlers:
            handler.addFilter(ClientLogRepeats())
        probe = MetadataProbe(k, args.component.replace(":", "-"))
        monitor = asyncio.create_task(watch().monitor(probe), name="broker-monitor")
        try:
            async with serving_metrics(settings.metrics, _metrics_port(settings, args.component, instance),
                                       args.component):
                await chosen.run(settings, stop, on_ready, instance)
        except Stopping:
            logging.getLogger("pipeline.cli").info("stopped while waiting for kafka")
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            await probe.close()
            state_file(settings, args.component, instance).unlink(missing_ok=True)

    eventloop.run(main())
    return 0


def _metrics_port(settings: Settings, name: str, instance: str) -> int:
    """The component's metrics port; 0 (any free port, logged) for an instance that is not a number."""
    try:
        return metrics_port(settings, name, instance)
    except ConfigError as exc:
        logging.getLogger("pipeline.cli").warning("%s; serving metrics on a free port instead", exc)
        return 0
