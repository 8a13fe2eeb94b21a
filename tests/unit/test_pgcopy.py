"""Binary COPY encoding, decoded back by an independent reader written from the spec."""

from __future__ import annotations

import struct

import numpy as np

from schemas.pgcopy import HEADER, TRAILER, Column, PgType, encode_rows


def _read(data: bytes, formats: list[str]) -> list[tuple[object, ...]]:
    assert data.startswith(HEADER) and data.endswith(TRAILER)
    pos, rows = len(HEADER), []
    while True:
        (nf,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if nf == -1:
            break
        row: list[object] = []
        for fmt in formats:
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length == -1:
                row.append(None)
            elif fmt == "text":
                row.append(data[pos : pos + length].decode())
                pos += length
            else:
                row.append(struct.unpack_from(fmt, data, pos)[0])
                pos += length
        rows.append(tuple(row))
    return rows


def test_fixed_layout_and_nulls_round_trip() -> None:
    ts = np.array([946_684_800_000_000_000, 946_684_800_000_001_000], dtype=np.int64)
    vals = np.array([1.5, float("nan")])
    seq = np.array([7, -1], dtype=np.int64)
    cols = [
        Column(PgType.TIMESTAMPTZ, ts),
        Column(PgType.TEXT, "binance"),
        Column(PgType.FLOAT8, vals, null=~np.isfinite(vals)),
        Column(PgType.BIGINT, seq, null=seq < 0),
        Column(PgType.SMALLINT, np.array([1, -1], dtype=np.int16)),
    ]
    data = HEADER + encode_rows(cols, 2) + TRAILER
    rows = sorted(_read(data, [">q", "text", ">d", ">q", ">h"]), key=lambda r: r[0])  # type: ignore[arg-type,return-value]
    # timestamptz: µs since 2000-01-01, which is 946684800 s after the Unix epoch
    assert rows == [(0, "binance", 1.5, 7, 1), (1, "binance", None, None, -1)]


def test_empty_text_and_zero_rows() -> None:
    assert encode_rows([Column(PgType.TEXT, "")], 0) == b""
    data = HEADER + encode_rows([Column(PgType.TEXT, "")], 1) + TRAILER
    assert _read(data, ["text"]) == [("",)]
