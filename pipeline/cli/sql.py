"""`poststelle sql "SELECT ..."`: ad-hoc, read-only queries of the analytics store."""
from __future__ import annotations

import argparse
import sys

import orjson

from pipeline.cli.common import settings_of
from pipeline.cli.table import format_table

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sql = sub.add_parser("sql", help="query the analytics store")
    sql.add_argument("query")
    sql.add_argument("--json", action="store_true", help="print {columns, rows} as JSON")
    sql.set_defaults(func=cmd_sql)


def cmd_sql(args: argparse.Namespace) -> int:
    from consumers.sinks.analytics import run_sql

    settings = settings_of(args)
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
