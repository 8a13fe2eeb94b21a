"""What commands print: `--json` documents on stdout, rich tables for people.

Logs never go to stdout (`streams/ops/logs.py` writes them to stderr), so `--json` output
can be piped into another program as it is.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import orjson
from rich.console import Console
from rich.table import Table

console = Console()

# Colours of the Burrow-style lag statuses (`kernels/lag_status.py`), in every table.
STATUS_STYLE: Final = {
    "OK": "green",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "STOPPED": "magenta",
}


def print_json(doc: Any) -> None:
    """One indented JSON document on stdout (the `--json` contract)."""
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_json_line(doc: Any) -> None:
    """One compact JSON document per line, flushed: for output that goes on (`--watch`)."""
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    sys.stdout.flush()


def key_value_table(title: str) -> Table:
    """A two-column table without a header: names in bold, values right-aligned."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    return table
