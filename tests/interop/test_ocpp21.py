"""OCPP 2.1 interop: the PyPI `ocpp` package's v21 ChargePoint against the gateway."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from ocpp.routing import on
from ocpp.v21 import ChargePoint as V21ChargePoint
from ocpp.v21 import call, call_result
from ocpp.v21.enums import (
    Action,
    AuthorizationStatusEnumType,
    BootReasonEnumType,
    ConnectorStatusEnumType,
    RegistrationStatusEnumType,
    RequestStartStopStatusEnumType,
    ResetStatusEnumType,
    TransactionEventEnumType,
    TriggerReasonEnumType,
)

pytestmark = pytest.mark.asyncio

SUBPROTOCOL = "ocpp2.1"
MESSAGE_RECEIVED = "chargepointgateway.message.received"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def new_id() -> str:
    return str(uuid.uuid4())


def id_token(value: str) -> dict:
    return {"idToken": value, "type": "ISO14443"}


class ChargePoint21(V21ChargePoint):
    """A 2.1 charging station that accepts remote starts and resets, recording them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handled: dict[str, list[dict]] = {}

    @on(Action.request_start_transaction)
    def on_request_start_transaction_21(self, **kwargs):
        self.handled.setdefault("RequestStartTransaction", []).append(kwargs)
        return call_result.RequestStartTransaction(
            status=RequestStartStopStatusEnumType.accepted
        )

    @on(Action.reset)
    def on_reset_21(self, **kwargs):
        self.handled.setdefault("Reset", []).append(kwargs)
        return call_result.Reset(status=ResetStatusEnumType.accepted)


async def boot(cp, call_fn):
    result = await call_fn(
        cp,
        call.BootNotification(
            charging_station={
                "model": "InteropModel21",
                "vendorName": "PyOCPP",
                "firmwareVersion": "2.1.0",
            },
            reason=BootReasonEnumType.power_up,
        ),
    )
    assert result.status == RegistrationStatusEnumType.accepted
    return result


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


async def test_boot_notification(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        result = await boot(cp, cp_call)
        assert isinstance(result.interval, int) and not isinstance(
            result.interval, bool
        )
        assert result.interval > 0
        datetime.fromisoformat(result.current_time)


async def test_heartbeat(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        result = await cp_call(cp, call.Heartbeat())
        parsed = datetime.fromisoformat(result.current_time)
        assert parsed.year >= 2024


async def test_status_notification(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        result = await cp_call(
            cp,
            call.StatusNotification(
                timestamp=now(),
                connector_status=ConnectorStatusEnumType.available,
                evse_id=1,
                connector_id=1,
            ),
        )
        assert isinstance(result, call_result.StatusNotification)


async def test_authorize(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        result = await cp_call(cp, call.Authorize(id_token=id_token("TAG-21-AUTH")))
        assert result.id_token_info["status"] == AuthorizationStatusEnumType.accepted


async def test_transaction_and_events(open_cp, cp_id, cp_call, admin):
    tx_id = new_id()
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)

        started_id = new_id()
        started = await cp_call(
            cp,
            call.TransactionEvent(
                event_type=TransactionEventEnumType.started,
                timestamp=now(),
                trigger_reason=TriggerReasonEnumType.authorized,
                seq_no=0,
                transaction_info={"transactionId": tx_id, "chargingState": "Charging"},
                evse={"id": 1, "connectorId": 1},
                id_token=id_token("TAG-21-TX"),
                meter_value=[
                    {
                        "timestamp": now(),
                        "sampledValue": [
                            {
                                "value": 1000,
                                "context": "Transaction.Begin",
                                "measurand": "Energy.Active.Import.Register",
                                "unitOfMeasure": {"unit": "Wh"},
                            }
                        ],
                    }
                ],
            ),
            started_id,
        )
        assert isinstance(started, call_result.TransactionEvent)
        if started.id_token_info is not None:
            assert started.id_token_info["status"] == "Accepted", started

        updated_id = new_id()
        await cp_call(
            cp,
            call.TransactionEvent(
                event_type=TransactionEventEnumType.updated,
                timestamp=now(),
                trigger_reason=TriggerReasonEnumType.meter_value_periodic,
                seq_no=1,
                transaction_info={"transactionId": tx_id, "chargingState": "Charging"},
                meter_value=[
                    {
                        "timestamp": now(),
                        "sampledValue": [
                            {
                                "value": 1234.5,
                                "context": "Sample.Periodic",
                                "measurand": "Energy.Active.Import.Register",
                                "unitOfMeasure": {"unit": "Wh"},
                            },
                            {
                                "value": 7200,
                                "context": "Sample.Periodic",
                                "measurand": "Power.Active.Import",
                                "unitOfMeasure": {"unit": "W"},
                            },
                        ],
                    }
                ],
            ),
            updated_id,
        )

        ended_id = new_id()
        await cp_call(
            cp,
            call.TransactionEvent(
                event_type=TransactionEventEnumType.ended,
                timestamp=now(),
                trigger_reason=TriggerReasonEnumType.stop_authorized,
                seq_no=2,
                transaction_info={"transactionId": tx_id, "stoppedReason": "Local"},
                id_token=id_token("TAG-21-TX"),
                meter_value=[
                    {
                        "timestamp": now(),
                        "sampledValue": [
                            {
                                "value": 2500,
                                "context": "Transaction.End",
                                "measurand": "Energy.Active.Import.Register",
                                "unitOfMeasure": {"unit": "Wh"},
                            }
                        ],
                    }
                ],
            ),
            ended_id,
        )

        sent = {
            mid: cp.conn.sent_call(mid) for mid in (started_id, updated_id, ended_id)
        }

    wanted = set(sent)
    events = await admin.wait_for_events(
        cp_id, lambda evs: wanted <= set(message_events(evs))
    )
    for event in events:
        assert_cloudevent(event, cp_id)
    by_id = message_events(events)
    missing = wanted - set(by_id)
    assert not missing, (
        f"no {MESSAGE_RECEIVED} event for message ids {sorted(missing)}; "
        f"event types seen: {sorted({e.get('type') for e in events})}"
    )

    expected_types = {started_id: "Started", updated_id: "Updated", ended_id: "Ended"}
    for mid, frame in sent.items():
        data = by_id[mid]["data"]
        assert data["ocppVersion"] == SUBPROTOCOL, data
        assert data["messageType"] == "call", data
        assert data["action"] == "TransactionEvent", data
        assert data["payload"] == frame[3], (data["payload"], frame[3])
        assert data["payload"]["eventType"] == expected_types[mid]
        assert data["payload"]["transactionInfo"]["transactionId"] == tx_id

    updated_values = [
        (sv["value"], sv["unitOfMeasure"]["unit"])
        for mv in by_id[updated_id]["data"]["payload"]["meterValue"]
        for sv in mv["sampledValue"]
    ]
    assert updated_values == [(1234.5, "Wh"), (7200, "W")]


async def test_connection_introspection(open_cp, cp_id, cp_call, admin):
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        status, body, text = await admin.connection(cp_id)
        assert status == 200, f"HTTP {status}: {text}"
        assert body["chargePointId"] == cp_id, body
        assert body["ocppVersion"] == SUBPROTOCOL, body


async def test_request_start_transaction_command(open_cp, cp_id, cp_call, admin):
    payload = {
        "idToken": id_token("TAG-21-REMOTE"),
        "remoteStartId": 421,
        "evseId": 1,
    }
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        answer = await admin.command(cp_id, "RequestStartTransaction", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("RequestStartTransaction") == [
            {
                "id_token": {"id_token": "TAG-21-REMOTE", "type": "ISO14443"},
                "remote_start_id": 421,
                "evse_id": 1,
            }
        ], cp.handled
        frames = cp.conn.received_calls("RequestStartTransaction")
        assert [f[3] for f in frames] == [payload], frames


async def test_reset_command(open_cp, cp_id, cp_call, admin):
    payload = {"type": "Immediate"}
    async with open_cp(ChargePoint21, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        answer = await admin.command(cp_id, "Reset", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("Reset") == [{"type": "Immediate"}], cp.handled
        frames = cp.conn.received_calls("Reset")
        assert [f[3] for f in frames] == [payload], frames
