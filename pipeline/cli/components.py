"""The composition root: which stages and checks exist, and every component a stack can run.

This is the one place (with the command modules beside it) that imports the ingress, the stages,
the sinks and the services. Both `poststelle run COMPONENT` and the supervisor behind
`poststelle up` read the same table (`components`), so a component is added in one place.

A site's own stages are Python modules named in `topology.stage_modules`; they are imported before
the configuration is validated, so `[stages.<name>]` sections and `topology.stages` may use them.
"""
from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import load_settings, raw_config
from pipeline.localstack import ServiceSpec
from pipeline.settings import ConfigError, Settings
from pipeline.supervisor import component_argv
from pipeline.topology_settings import chain_name

__all__ = ["Component", "components", "component", "known_components", "stage_components", "pipeline_specs",
           "process_counts", "load_builtins", "load_config", "metrics_port", "metrics_endpoints", "consumer_groups",
           "BUILTIN_STAGE_MODULES", "BUILTIN_CHECK_MODULES"]

# modules whose import registers the built-in stages and checks; the config picks from them by name
BUILTIN_STAGE_MODULES: tuple[str, ...] = (
    "consumers.stages.route",
    "consumers.stages.blocklist",
    "consumers.stages.virus",
    "consumers.stages.attachment",
    "consumers.stages.auth",
    "consumers.stages.expand",
    "consumers.stages.spam.stage",
)
BUILTIN_CHECK_MODULES: tuple[str, ...] = (
    "ingress.checks.relay",
    "ingress.checks.dnsbl",
    "ingress.checks.fcrdns",
    "ingress.checks.sender_domain",
    "ingress.checks.rhsbl",
    "ingress.checks.recipient",
    "ingress.checks.group_policy",
    "ingress.checks.greylist",
    "ingress.checks.sender_login",
    "ingress.checks.srs",
)

def load_builtins(extra_modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import the built-in stage and check modules (they register themselves), and `extra_modules`."""
    for module in (*BUILTIN_STAGE_MODULES, *BUILTIN_CHECK_MODULES, *extra_modules):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not exc.name or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the module is there, but something it imports is not
            raise ConfigError(f"topology.stage_modules: no module named {module!r} on the Python path") from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The validated settings, with every built-in stage and check (and the site's own stages) known."""
    environ = os.environ if environ is None else environ
    modules = raw_config(path, environ).get("topology", {}).get("stage_modules", [])
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    load_builtins(tuple(modules) if isinstance(modules, list) else ())
    return load_settings(path, environ)


@dataclass(frozen=True, slots=True)
class Component:
    """One runnable process: its name (`poststelle run NAME`), what it does, and what runs it.

    `target` is "module:function", imported only when the component runs (so `poststelle status`
    does not load ClickHouse); the function is called as
    `function(settings, stop, on_ready, instance=..., **options)` and returns when `stop` is set.
    """

    name: str
    description: str
    target: str
    options: tuple[tuple[str, str], ...] = ()  # keyword arguments of the function
    group: str = ""  # its Kafka consumer group, after `<topic_prefix>.` ("": it is no group member)

    async def run(self, settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None,
                  instance: str = "0") -> None:
        module, _, function = self.target.partition(":")
        main = getattr(importlib.import_module(module), function)
        await main(settings, stop, on_ready, instance=instance, **dict(self.options))


INGRESS = Component("ingress", "the SMTP listeners: MX and submission", "ingress.server:run_ingress")
ANALYTICS = Component("sink:analytics", "writes every event to ClickHouse and answers `poststelle sql`",
                      "consumers.sinks.analytics:run_analytics_sink", group="analytics")


def sink_component(settings: Settings, name: str) -> Component:
    """The sink `name`: analytics, or the sink of the destination `name` (`sink:<name>`)."""
    if name == "analytics":
        return ANALYTICS
    d = settings.destination(name)
    what = d.description or f"{d.kind} to {d.host}:{d.port}"
    return Component(f"sink:{name}", f"delivers routed.{name} ({what})",
                     "consumers.sinks.destination:run_destination_sink", (("destination", name),), group=f"sink.{name}")


VERDICT = Component("verdict", "turns rejections the sender was told 250 for into quarantine",
                    "consumers.services.verdict:run_verdict_service", group="verdict")
RETRY = Component("retry", "sends deferred deliveries back to their sink when they are due",
                  "consumers.services.retry:run_retry_service", group="retry")
BOUNCE = Component("bounce", "turns bounced deliveries into DSNs to their senders",
                   "consumers.services.bounce:run_bounce_service", group="bounce")
DIGEST = Component("digest", "mails each user the new entries of their quarantine; removes expired entries "
                   "and blobs past their retention",
                   "consumers.services.digest:run_digest_service")
WEB = Component("web", "the quarantine portal: users release their held mail, admins approve requests",
                "pipeline.cli.components:run_web")


async def run_web(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None,
                  instance: str = "0") -> None:
    """The portal with the spam stage's ham learner, built here: a service never imports a stage."""
    from consumers.services.portal.app import run_portal
    from pipeline.cli.spam import ham_learner

    await run_portal(settings, stop, on_ready, instance, learn_ham=ham_learner(settings))


def stage_component(name: str) -> Component:
    from pipeline.registry import get_stage

    return Component(f"stage:{name}", get_stage(name).description, "pipeline.runner:run_stage", (("stage", name),),
                     group=name)


def chain_component(stages: list[str]) -> Component:
    """The stages `stages` (a chain of `topology.chains`) in one process: `chain:<first>-<last>`."""
    name = chain_name(stages)
    return Component(f"chain:{name}", f"runs {', '.join(stages)} in one process and transaction",
                     "pipeline.chain:run_chain", (("chain", name),), group=f"chain.{name}")


def stage_components(settings: Settings) -> list[Component]:
    """What runs the stages: a component per chain (`chain:NAME`) and per stage in no chain (`stage:NAME`)."""
    return [chain_component(run) if len(run) > 1 else stage_component(run[0]) for run in settings.topology.runs()]


def known_components(settings: Settings) -> dict[str, Component]:
    """Every component these settings can run by hand (`poststelle run`), by name."""
    sinks = [sink_component(settings, n) for n in (*settings.destination_names, "analytics")]
    found = [INGRESS, *stage_components(settings), *sinks, VERDICT, RETRY, BOUNCE, DIGEST, WEB]
    return {c.name: c for c in found}


def components(settings: Settings) -> list[Component]:
    """The components `poststelle up` runs for these settings, in start order."""
    s = settings.supervisor
    chosen: list[Component] = []
    if s.run_ingress:
        chosen.append(INGRESS)
    if s.run_stages:
        chosen.extend(stage_components(settings))
        chosen.append(VERDICT)  # turns rejections the sender was not told of into quarantine
        chosen.append(WEB)  # the quarantine portal
    chosen.extend(sink_component(settings, name) for name in s.sinks)
    if set(settings.destination_names) & set(s.sinks):  # deferred deliveries, DSNs, digests: with the delivery sinks
        chosen.extend([RETRY, BOUNCE, DIGEST])
    return chosen


def component(settings: Settings, name: str) -> Component:
    """The component called `name` (a ConfigError naming the known ones when there is none)."""
    known = known_components(settings)
    if name not in known:
        if name.startswith("stage:") and name[6:] in settings.topology.stages:
            chain = next(c for c in settings.topology.chains if name[6:] in c)
            raise ConfigError(f"{name}: the stage runs in chain:{chain_name(chain)} (topology.chains); "
                              "take it out of the chain to run it alone")
        if name.startswith("stage:"):
            raise ConfigError(f"{name}: stage is not in topology.stages")
        raise ConfigError(f"unknown component {name!r} (known: {', '.join(known)})")
    return known[name]


MAX_PROCESSES = 16


def process_counts(settings: Settings) -> dict[str, int]:
    """`[supervisor] processes`, checked: only components that can share their work run several.

    The ingress's processes share its listening ports (the kernel spreads connections); a stage's
    or a delivery sink's share its consumer group (Kafka spreads partitions). The others hold a
    port of their own, a schedule or a table, and run once.
    """
    counts = settings.supervisor.processes
    shareable = ["ingress", *(c.name for c in stage_components(settings)),
                 *(f"sink:{n}" for n in settings.destination_names)]
    for name, count in counts.items():
        if name not in shareable:
            raise ConfigError(f"supervisor.processes.{name}: only these run as several processes: "
                              f"{', '.join(shareable)}")
        if not 1 <= count <= MAX_PROCESSES:
            raise ConfigError(f"supervisor.processes.{name}: expected 1 to {MAX_PROCESSES}, got {count}")
    return dict(counts)


def pipeline_specs(settings: Settings) -> list[ServiceSpec]:
    """What the supervisor starts: `poststelle run <component>` for each component of `components`,
    as many times as `[supervisor] processes` says (instance k > 0 is the child `<name>.<k>`)."""
    counts = process_counts(settings)
    specs = []
    for c in components(settings):
        specs.append(ServiceSpec(name=c.name, argv=component_argv(c.name), stop_timeout=5.0))
        specs.extend(ServiceSpec(name=f"{c.name}.{k}", argv=component_argv(c.name), stop_timeout=5.0,
                                 env={"POSTSTELLE_INSTANCE": str(k)}) for k in range(1, counts.get(c.name, 1)))
    return specs


def metrics_port(settings: Settings, name: str, instance: str = "0") -> int:
    """The port of the component `name`'s ``/metrics`` (see `pipeline.metrics_settings`).

    The index is the component's place in this order: the ingress and the services first, then
    the analytics sink, the stages in `topology.stages` order, the destinations' sinks in config
    order. Adding a stage moves the ports of the destinations' sinks, never those before it."""
    known = known_components(settings)
    fixed = [INGRESS, VERDICT, RETRY, BOUNCE, DIGEST, WEB, ANALYTICS]
    order = [c.name for c in fixed] + [n for n in known if n.startswith(("stage:", "chain:"))]
    order += [n for n in known if n not in order]
    if name not in order:
        raise ConfigError(f"unknown component {name!r}")
    return settings.metrics.port(order.index(name), instance)


def metrics_endpoints(settings: Settings) -> dict[str, str]:
    """The ``/metrics`` URL of each process `poststelle up` runs, by its name in `status`
    (``stage:virus``; ``stage:virus.1`` for the second of `[supervisor] processes`)."""
    host = settings.metrics.host
    host = f"[{host}]" if ":" in host else host
    counts = process_counts(settings)
    return {f"{c.name}.{k}" if k else c.name: f"http://{host}:{metrics_port(settings, c.name, str(k))}/metrics"
            for c in components(settings) for k in range(counts.get(c.name, 1))}


def consumer_groups(settings: Settings, chosen: list[Component] | None = None) -> dict[str, tuple[str, list[str]]]:
    """Component name → (its consumer group id, the topics the group reads), for the group members
    among `chosen` (default: what `poststelle up` runs)."""
    from pipeline.bus import Topics

    topics = Topics.from_settings(settings)
    prefix = settings.kafka.topic_prefix
    found: dict[str, tuple[str, list[str]]] = {}
    for c in components(settings) if chosen is None else chosen:
        if not c.group:
            continue
        kind, _, name = c.name.partition(":")
        if kind == "stage":
            inputs = [topics.stage_input(name)]
        elif kind == "chain":  # the first stage's input and the checked topics inside the chain
            stages = settings.topology.chain(name)
            inputs = [topics.stage_input(stages[0]), *(topics.checked(st) for st in stages[:-1])]
        elif c is ANALYTICS:
            inputs = topics.event_topics()
        elif kind == "sink":
            inputs = [topics.routed(name)]
        else:  # the services: what each one's hop reads (consumers/services/)
            inputs = {"verdict": [topics.rejected], "bounce": [topics.delivery],
                      "retry": [topics.retry(d) for d in topics.retry_delays]}[c.name]
        found[c.name] = (f"{prefix}.{c.group}", inputs)
    return found
