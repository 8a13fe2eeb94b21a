"""`sepstream` command line: the `main` group and its commands, one module per group.

`--json` prints one JSON document on stdout; logs go to stderr. An expected failure (a bad
setting, a service down) ends a command with one `sepstream: ...` line on stderr
(`streams/cli/failures.py`). The commands: `pipeline` (worker, demo, collect), `data`
(bars, backfill, symbols, train), `backtest` (replay), `ops` (status, lag, db-init).
"""

from __future__ import annotations

import click

from streams.cli import backtest, data, ops, pipeline
from streams.cli.failures import CommandGroup


@click.group(cls=CommandGroup)
@click.version_option(
    package_name="sepstream", prog_name="sepstream", message="%(prog)s %(version)s"
)
def main() -> None:
    """sepstream: market data through Kafka into TimescaleDB and Redis."""


for command in (
    pipeline.worker,
    pipeline.demo,
    pipeline.collect,
    data.symbols,
    data.backfill,
    data.bars,
    data.train,
    backtest.replay,
    ops.lag,
    ops.status,
    ops.db_init,
):
    main.add_command(command)

__all__ = ["main"]
