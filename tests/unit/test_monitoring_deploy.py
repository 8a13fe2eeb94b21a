# ruff: noqa: E501  (the promtool spec below repeats the rules' long annotation texts)
"""deploy/: the alert rules fire on what they should (promtool), and the rules and the
Grafana dashboard only name metrics that the workers actually export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import prometheus_client
import pytest

import streams.ops.metrics  # noqa: F401  (registers the metrics)
from tests.conftest import REPO

PROM = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian `prometheus`; .ci/run installs it)"
)


def _exported_names() -> set[str]:
    """Every sample name the default registry can expose (counters as _total etc.)."""
    names = set()
    for metric in prometheus_client.REGISTRY.collect():
        names.add(metric.name)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names |= {metric.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def _referenced(text: str) -> set[str]:
    return set(re.findall(r"\bsepstream_[a-z0-9_]+", text))


def test_rules_and_dashboard_name_exported_metrics() -> None:
    exported = _exported_names()
    rules = (PROM / "alerts.yml").read_text()
    assert _referenced(rules) and _referenced(rules) <= exported, _referenced(rules) - exported
    dash = json.loads((GRAFANA / "dashboards" / "sepstream.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(_referenced(e) for e in exprs))
    assert used <= exported, used - exported
    # the list: events in/out, DLQ by reason, batch sizes, sink latency,
    # end-to-end latency, kernel time, lag, freshness, quality
    for name in (
        "sepstream_events_in_total",
        "sepstream_dead_letters_total",
        "sepstream_batch_events_bucket",
        "sepstream_sink_write_seconds_bucket",
        "sepstream_end_to_end_seconds_bucket",
        "sepstream_kernel_seconds_bucket",
        "sepstream_consumer_lag_messages",
        "sepstream_consumer_lag_seconds",
        "sepstream_consumer_group_status",
        "sepstream_data_freshness_seconds",
    ):
        assert name in used, name
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "sepstream-prometheus" for p in dash["panels"])
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: sepstream-prometheus" in datasource


def test_compose_mounts_what_prometheus_and_grafana_read() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose
    assert "rule_files:\n  - alerts.yml" in (PROM / "prometheus.yml").read_text()
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/sepstream:ro" in compose
    provider = (GRAFANA / "provisioning" / "dashboards" / "sepstream.yml").read_text()
    assert "path: /var/lib/grafana/dashboards/sepstream" in provider


@needs_promtool
def test_promtool_checks_config_and_rules() -> None:
    subprocess.run(["promtool", "check", "config", str(PROM / "prometheus.yml")], check=True)


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'sepstream_data_freshness_seconds{{venue="binance",symbol="BTC-USDT",instance="w1"}}'
        values: '400x15'
      - series: 'sepstream_data_freshness_seconds{{venue="binance",symbol="ETH-USDT",instance="w1"}}'
        values: '5x15'
      - series: 'sepstream_consumer_group_status{{group="stuck",instance="w1"}}'
        values: '2x15'
      - series: 'sepstream_consumer_group_status{{group="gone",instance="w1"}}'
        values: '3x15'
      - series: 'sepstream_consumer_group_status{{group="fine",instance="w1"}}'
        values: '1x15'
      - series: 'sepstream_events_out_total{{stage="validate",instance="w1"}}'
        values: '0+60x30'
      - series: 'sepstream_dead_letters_total{{stage="validate",reason="bad_symbol",instance="w1"}}'
        values: '0+{dlq_per_min}x30'
    alert_rule_test:
      - eval_time: 15m
        alertname: SepstreamDataStale
        exp_alerts:
          - exp_labels: {{severity: warning, venue: binance, symbol: BTC-USDT}}
            exp_annotations:
              summary: "No tick for binance BTC-USDT in 6m 40s"
              description: "The newest trade/quote was received more than 5 minutes ago: the collector, the venue feed or the pipeline has stopped for this instrument."
      - eval_time: 15m
        alertname: SepstreamConsumerLagError
        exp_alerts:
          - exp_labels: {{severity: critical, group: stuck}}
            exp_annotations:
              summary: "Consumer group stuck is stalled on a partition (ERROR)"
              description: "A partition's committed offset has not moved for a whole window while behind; `sepstream lag --group stuck` shows which."
      - eval_time: 15m
        alertname: SepstreamConsumerLagStopped
        exp_alerts:
          - exp_labels: {{severity: critical, group: gone}}
            exp_annotations:
              summary: "Consumer group gone stopped while behind (STOPPED)"
              description: "The group is behind and committed nothing during the window (or has no members): no worker is consuming."
      - eval_time: 25m
        alertname: SepstreamDataQualityLow
        exp_alerts: {expected_quality}
"""

QUALITY_FIRING = """
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "Data quality 50% (< 80 %)"
              description: "More than one event in five is dead-lettered by validate; `sepstream status` shows the score per instrument and sepstream_dead_letters_total the reasons."
"""


@needs_promtool
@pytest.mark.parametrize(("dlq_per_min", "fires"), [(60, True), (6, False)])
def test_alert_rules_fire_on_their_conditions(
    tmp_path: Path, dlq_per_min: int, fires: bool
) -> None:
    """Half the events dead-lettered → quality 0.5 fires; one in eleven (0.91) does not."""
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        ALERT_TESTS.format(
            rules=PROM / "alerts.yml",
            dlq_per_min=dlq_per_min,
            expected_quality=QUALITY_FIRING if fires else "[]",
        )
    )
    done = subprocess.run(
        ["promtool", "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
