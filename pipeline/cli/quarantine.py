"""`poststelle quarantine list | get`: held parts and quarantined messages; getting one back out."""
from __future__ import annotations

import argparse
import asyncio
import sys

from pipeline.blobstore import BlobNotFound, FileBlobStore
from pipeline.cli.common import settings_of
from pipeline.cli.table import print_rows
from pipeline.state.quarantine import QuarantineError, extract, find_entry, quarantine_rows, read_quarantine

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    quarantine = sub.add_parser("quarantine", help="held parts and quarantined messages")
    quarantine.add_argument("action", nargs="?", choices=["list", "get"], default="list")
    quarantine.add_argument("message_id", nargs="?", default="")
    quarantine.add_argument("part", nargs="?", default="", help="MIME part number (default: the whole message)")
    quarantine.add_argument("-o", "--output", help="with get: write to FILE ('-': stdout)")
    quarantine.add_argument("--json", action="store_true", help="with list: print {columns, rows} as JSON")
    quarantine.set_defaults(func=cmd_quarantine)


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List held parts and quarantined messages, or (`get ID [PART] -o FILE`) extract one."""
    settings = settings_of(args)
    entries = asyncio.run(read_quarantine(settings))
    if args.action == "list":
        columns, rows = quarantine_rows(entries)
        print_rows(columns, rows, args.json, "quarantine is empty")
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
