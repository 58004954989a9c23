"""Aligned text tables for the terminal (`poststelle sql`, `queue`, `quarantine list`, ...)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["format_table", "print_rows"]


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, dict)):
        text = orjson.dumps(value, default=str).decode()
    else:
        text = str(value)
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def format_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], max_width: int | None = None) -> str:
    """An aligned text table: header, separator, rows (numbers right-aligned), then ``(N rows)``.

    NULL is shown as ``NULL``, arrays as JSON, control characters escaped; `max_width` cuts longer
    cells with an ellipsis.
    """
    data = [list(row) for row in rows]
    cells = [[_cell(value) for value in row] for row in data]
    if max_width is not None:
        cells = [[c if len(c) <= max_width else c[: max(1, max_width - 1)] + "…" for c in row] for row in cells]
    header = [_cell(name) for name in columns]
    widths = [max([len(header[i]), *(len(row[i]) for row in cells)]) for i in range(len(header))]
    right = [bool(data) and all(_is_number(row[i]) or row[i] is None for row in data) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(data)} row{'' if len(data) == 1 else 's'})")
    return "\n".join(out)


def print_rows(columns: Sequence[str], rows: list[list[Any]], as_json: bool, empty: str) -> None:
    """A command's rows: `{columns, rows}` as JSON for scripts, else a table (or `empty` when there are none)."""
    if as_json:
        print(orjson.dumps({"columns": list(columns), "rows": rows}, default=str).decode())
    else:
        print(format_table(columns, rows) if rows else empty)
