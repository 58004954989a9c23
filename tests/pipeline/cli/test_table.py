"""Text tables of the command line."""
from __future__ import annotations

from pipeline.cli.table import format_table


def test_format_table_aligns_columns() -> None:
    text = format_table(["type", "n", "rcpts"], [["received", 12, ["a@x"]], ["smtp_reject", 3, None]])
    assert text.splitlines() == [
        "type        |  n | rcpts",
        "------------+----+--------",
        'received    | 12 | ["a@x"]',
        "smtp_reject |  3 | NULL",
        "(2 rows)",
    ]
    assert format_table(["a"], []).splitlines() == ["a", "-", "(0 rows)"]
    assert format_table(["a"], [["x\ny"]]).splitlines()[-2:] == ["x\\ny", "(1 row)"]
