"""Checks of the CloudEvents the gateway records, shared by the OCPP 1.6 and 2.x tests."""

from __future__ import annotations

MESSAGE_RECEIVED = "chargepointgateway.message.received"


def assert_cloudevent(event: dict, cp_id: str) -> None:
    for attr in ("id", "source", "type"):
        assert isinstance(event.get(attr), str) and event[attr], (attr, event)
    assert event.get("specversion") == "1.0", event
    assert event.get("subject") == cp_id, event
    assert "data" in event, event


def message_events(events: list[dict]) -> dict[str, dict]:
    """Inbound-message events, keyed by OCPP message id."""
    return {
        e["data"]["messageId"]: e
        for e in events
        if e.get("type") == MESSAGE_RECEIVED
        and isinstance(e.get("data"), dict)
        and "messageId" in e["data"]
    }
