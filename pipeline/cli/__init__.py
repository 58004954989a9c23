"""The `poststelle` command: the composition root, one module per group of commands.

    poststelle up                      run the local stack in the foreground (Ctrl-C stops it)
    poststelle status [--wait SECS]    is every component up? (exit 0 yes, 1 no: names the missing)
    poststelle stop|start COMPONENT    hold a component of the running stack down / release it
    poststelle run COMPONENT           one process (see pipeline.cli.components)
    poststelle sql "SELECT ..."        query the analytics store, print a table
    poststelle queue [retry|delete ID|--all]   deferred deliveries; try now, or drop (postqueue -p/-f, postsuper -d)
    poststelle quarantine list|show|release|delete|approve|get   the quarantine's entries; act on one
    poststelle trace ID|--recipient A  a message's timeline: SMTP checks, stages, delivery, quarantine, release
    poststelle digest send [--user ADDRESS] [--dry-run]   mail the quarantine digests now
    poststelle deadletter list|show|replay   records a consumer could not handle; put one back
    poststelle list add|remove|show    the site's own block and allow lists
    poststelle user show|set|reset ADDRESS   a user's own settings (quarantine, spam thresholds, sender lists)
    poststelle spam learn|forget|stats train the spam stage's Bayes model (--spam|--ham PATH...), show it
    poststelle config check            validate the configuration and print it
    poststelle deploy k8s [--out DIR]  Kubernetes Deployments and KEDA ScaledObjects from the topology
    poststelle schemas export [DIR]    write the events' JSON Schema files

Only this package imports the ingress, the stages, the sinks and the services
(`pipeline.cli.components`); everything below it imports downwards.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import config, deadletter, deploy, digest, lists, quarantine, queue, spam, sql, stack, trace, users
from pipeline.settings import ConfigError

__all__ = ["main", "build_parser"]

COMMAND_MODULES = (stack, sql, queue, quarantine, trace, digest, deadletter, lists, users, spam, config, deploy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poststelle", description="event-sourced mail gateway")
    parser.add_argument("--config", "-c", help="TOML config (default: $POSTSTELLE_CONFIG, else the local stack's)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"poststelle: configuration error: {exc}", file=sys.stderr)
        return 2
