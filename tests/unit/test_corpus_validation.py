"""The bad-input corpus (tests/fixtures/bad_input) against decode and the validation rules.

Fast and without services: each case's records go through what the validate stage does with
a record (size limit, decode, record-level reason with the Kafka key, per-event reasons,
one validator for the whole corpus as in one worker), and the `validate:*` dead letters and
accepted events must be exactly what the case says. The real worker runs the same corpus in
tests/faults/test_bad_input_corpus.py; this test keeps the corpus's expectations honest.
"""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from kernels.validation import ValidationRules, Validator, source_id
from schemas.batch import CodecError, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import Kind
from streams.settings import Settings
from tests.fixtures.bad_input import Case, corpus_settings, load

NOW = time.time_ns()
CASES = load(NOW)


def _validate(validator: Validator, limit: int, case: Case, first: int) -> tuple[Counter[str], int]:
    """(validate dead letters by "validate:reason", trade events accepted) of one case."""
    dead: Counter[str] = Counter()
    accepted = 0
    for offset, (key, value) in enumerate(case.records, start=first):
        if len(value) > limit:
            dead["validate:oversized"] += 1
            continue
        try:
            batch = decode_batch(value)
        except CodecError as exc:
            dead[f"validate:{exc.reason}"] += 1
            continue
        shared = validator.record_reason(batch, key)
        reasons = (
            [shared[0]] * len(batch)
            if shared
            else validator.event_reasons(batch, NOW, source_id(0, offset))
        )
        for i, reason in enumerate(reasons):
            if reason is None:
                assert batch.kind is Kind.TRADE, "the fault test counts accepted events as ticks"
                accepted += 1
                continue
            dead[f"validate:{reason}"] += 1
            letter = dead_letter(stage="validate", reason=reason, key=key, event=batch.raw_event(i))
            assert orjson.loads(letter)["event"]["kind"] == batch.kind.value
    return dead, accepted


def test_every_case_gets_exactly_its_validate_dead_letters() -> None:
    settings = corpus_settings(Settings())
    validator = Validator(ValidationRules.from_settings(settings))
    first = 0
    wrong = {}
    for case in CASES:
        dead, accepted = _validate(validator, settings.max_record_bytes, case, first)
        first += len(case.records)
        want = Counter({k: n for k, n in case.dead.items() if k.startswith("validate:")})
        if (dead, accepted) != (want, case.accepted):
            wrong[case.name] = {"got": (dict(dead), accepted), "want": (dict(want), case.accepted)}
    assert wrong == {}


def test_the_corpus_covers_every_column_of_every_kind() -> None:
    names = " ".join(case.name for case in CASES)
    for kind, columns in (
        ("trade", ("ts_event", "ts_recv", "price", "size", "side", "trade_id", "seq")),
        ("quote", ("ts_event", "ts_recv", "bid_price", "bid_size", "ask_price", "ask_size", "seq")),
        ("bar", ("ts_event", "ts_recv", "open", "high", "low", "close", "volume", "trades")),
        ("bar", ("vwap", "flags")),
        ("gap", ("ts_event", "ts_recv")),
    ):
        for column in columns:
            assert f"{kind}.{column}: values of the wrong type" in names, (kind, column)
    reasons = Counter(r for case in CASES for r in case.dead)
    for reason in ("key_mismatch", "missing_key", "bad_symbol", "unknown_venue", "malformed"):
        assert reasons[f"validate:{reason}"] > 0, reason


@pytest.mark.parametrize("case", CASES, ids=[c.name[:60] for c in CASES])
def test_cases_are_well_formed(case: Case) -> None:
    assert case.records and (case.dead or case.accepted)
    assert all(n > 0 for n in case.dead.values())
