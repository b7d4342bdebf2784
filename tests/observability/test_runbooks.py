"""The alerts' runbook annotations point at sections of docs/operations.md, and every
alert carries a severity. Standard library only (the rules file is read line by line)."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "charge-point-gateway.rules.yml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"

EXPECTED_ALERTS = {
    "MassDisconnect",
    "RefusedConnectionSpike",
    "AuthFailureSpike",
    "TlsCertificateExpiringSoon",
    "ClusterRegistryDown",
    "KafkaProduceFailures",
    "KafkaProducerQueueHigh",
    "KafkaBrokerDown",
    "CommandConsumerLagGrowing",
    "CommandTimeouts",
    "IngestLatencyHigh",
    "FileDescriptorsNearLimit",
    "GatewayDown",
    "GatewayNotReady",
}


def alert_blocks() -> dict[str, str]:
    """{alert name: the text of its rule}, split at each `- alert:` / `- record:`."""
    text = RULES.read_text(encoding="utf-8")
    blocks = {}
    parts = re.split(r"(?m)^\s*- (?=alert:|record:)", text)
    for part in parts[1:]:
        m = re.match(r"alert:\s*(\S+)", part)
        if m:
            blocks[m.group(1)] = part
    return blocks


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            title = m.group(1).strip().lower()
            title = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            anchors.add(title)
    return anchors


def test_the_expected_alerts_exist():
    assert set(alert_blocks()) == EXPECTED_ALERTS


def test_every_alert_has_severity_and_annotations():
    for name, block in alert_blocks().items():
        assert re.search(r"severity:\s*(critical|warning)\b", block), name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"(?m)^\s+{annotation}:", block), f"{name}: no {annotation}"


def test_runbooks_point_at_operations_sections():
    anchors = github_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for name, block in alert_blocks().items():
        m = re.search(r"runbook:\s*docs/operations\.md#(\S+)", block)
        assert m, f"{name}: runbook is not docs/operations.md#..."
        assert m.group(1) == name.lower(), f"{name}: anchor {m.group(1)}"
        assert m.group(1) in anchors, f"{name}: no section #{m.group(1)} in docs/operations.md"
