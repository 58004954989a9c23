"""`poststelle config check` and `poststelle schemas export`: the configuration and the event schemas."""
from __future__ import annotations

import argparse
import dataclasses
import sys

import orjson

from pipeline.cli.common import check_stages, settings_of
from pipeline.cli.components import process_counts

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    config.add_parser("check", help="validate and print the configuration").set_defaults(func=cmd_config_check)
    schemas = sub.add_parser("schemas", help="event schemas").add_subparsers(dest="action", required=True)
    export = schemas.add_parser("export", help="write JSON Schema files")
    export.add_argument("directory", nargs="?", default=None)
    export.set_defaults(func=cmd_schemas_export)


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    check_stages(settings)
    process_counts(settings)
    data = dataclasses.asdict(settings)
    data["stages"] = {k: dataclasses.asdict(v) for k, v in settings.stages.items()}
    data["checks"] = {k: dataclasses.asdict(v) for k, v in settings.checks.items()}
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"config OK ({settings.source or 'defaults'})", file=sys.stderr)
    return 0


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from schemas.jsonschema import export_all

    for path in export_all(args.directory):
        print(path)
    return 0
