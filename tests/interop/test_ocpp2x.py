"""OCPP 2.0.1 and 2.1 interop: the PyPI `ocpp` package's v201 and v21 ChargePoints
against the gateway.

The package's v201 and v21 APIs are the same apart from their modules, so every test
runs once per version through the `version` fixture; the test id names the
subprotocol (e.g. `test_heartbeat[ocpp2.1]`). What differs between the versions is in
the `VERSIONS` table below, and nowhere else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from types import ModuleType

import ocpp.v21
import ocpp.v201
import pytest
from ocpp.routing import on

from support.events import MESSAGE_RECEIVED, assert_cloudevent, message_events

pytestmark = pytest.mark.asyncio


def charge_point_class(package: ModuleType, name: str) -> type:
    """A charging station on `package` (ocpp.v201 or ocpp.v21) that accepts remote
    starts and resets, recording them."""
    Action = package.enums.Action
    call_result = package.call_result
    enums = package.enums

    class ChargePoint(package.ChargePoint):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.handled: dict[str, list[dict]] = {}

        @on(Action.request_start_transaction)
        def on_request_start_transaction(self, **kwargs):
            self.handled.setdefault("RequestStartTransaction", []).append(kwargs)
            return call_result.RequestStartTransaction(
                status=enums.RequestStartStopStatusEnumType.accepted
            )

        @on(Action.reset)
        def on_reset(self, **kwargs):
            self.handled.setdefault("Reset", []).append(kwargs)
            return call_result.Reset(status=enums.ResetStatusEnumType.accepted)

    ChargePoint.__name__ = ChargePoint.__qualname__ = name
    return ChargePoint


@dataclass(frozen=True)
class Ocpp2x:
    """One OCPP 2.x version under test."""

    subprotocol: str  # negotiated subprotocol, reported as ocppVersion; the test id
    tag: str  # marks this version's model name and id tokens, e.g. "TAG-201-TX"
    remote_start_id: int  # remoteStartId sent with RequestStartTransaction
    call: ModuleType  # the package's call classes (requests)
    call_result: ModuleType  # the package's call_result classes (responses)
    enums: ModuleType  # the package's enums
    charge_point: type  # ChargePoint subclass from charge_point_class()


VERSIONS = [
    Ocpp2x(
        subprotocol="ocpp2.0.1",
        tag="201",
        remote_start_id=4201,
        call=ocpp.v201.call,
        call_result=ocpp.v201.call_result,
        enums=ocpp.v201.enums,
        charge_point=charge_point_class(ocpp.v201, "ChargePoint201"),
    ),
    Ocpp2x(
        subprotocol="ocpp2.1",
        tag="21",
        remote_start_id=421,
        call=ocpp.v21.call,
        call_result=ocpp.v21.call_result,
        enums=ocpp.v21.enums,
        charge_point=charge_point_class(ocpp.v21, "ChargePoint21"),
    ),
]


@pytest.fixture(params=VERSIONS, ids=lambda v: v.subprotocol)
def version(request) -> Ocpp2x:
    return request.param


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def new_id() -> str:
    return str(uuid.uuid4())


def id_token(value: str) -> dict:
    return {"idToken": value, "type": "ISO14443"}


async def boot(v: Ocpp2x, cp, call_fn):
    result = await call_fn(
        cp,
        v.call.BootNotification(
            charging_station={
                "model": f"InteropModel{v.tag}",
                "vendorName": "PyOCPP",
                "firmwareVersion": "2.1.0",
            },
            reason=v.enums.BootReasonEnumType.power_up,
        ),
    )
    assert result.status == v.enums.RegistrationStatusEnumType.accepted
    return result


async def test_boot_notification(version, open_cp, cp_id, cp_call):
    v = version
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        result = await boot(v, cp, cp_call)
        assert isinstance(result.interval, int) and not isinstance(
            result.interval, bool
        )
        assert result.interval > 0
        datetime.fromisoformat(result.current_time)


async def test_heartbeat(version, open_cp, cp_id, cp_call):
    v = version
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        result = await cp_call(cp, v.call.Heartbeat())
        parsed = datetime.fromisoformat(result.current_time)
        assert parsed.year >= 2024


async def test_status_notification(version, open_cp, cp_id, cp_call):
    v = version
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        result = await cp_call(
            cp,
            v.call.StatusNotification(
                timestamp=now(),
                connector_status=v.enums.ConnectorStatusEnumType.available,
                evse_id=1,
                connector_id=1,
            ),
        )
        assert isinstance(result, v.call_result.StatusNotification)


async def test_authorize(version, open_cp, cp_id, cp_call):
    v = version
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        result = await cp_call(
            cp, v.call.Authorize(id_token=id_token(f"TAG-{v.tag}-AUTH"))
        )
        assert (
            result.id_token_info["status"]
            == v.enums.AuthorizationStatusEnumType.accepted
        )


async def test_transaction_and_events(version, open_cp, cp_id, cp_call, admin):
    v = version
    TransactionEventEnumType = v.enums.TransactionEventEnumType
    TriggerReasonEnumType = v.enums.TriggerReasonEnumType
    tx_id = new_id()
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)

        started_id = new_id()
        started = await cp_call(
            cp,
            v.call.TransactionEvent(
                event_type=TransactionEventEnumType.started,
                timestamp=now(),
                trigger_reason=TriggerReasonEnumType.authorized,
                seq_no=0,
                transaction_info={"transactionId": tx_id, "chargingState": "Charging"},
                evse={"id": 1, "connectorId": 1},
                id_token=id_token(f"TAG-{v.tag}-TX"),
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
        assert isinstance(started, v.call_result.TransactionEvent)
        if started.id_token_info is not None:
            assert started.id_token_info["status"] == "Accepted", started

        updated_id = new_id()
        await cp_call(
            cp,
            v.call.TransactionEvent(
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
            v.call.TransactionEvent(
                event_type=TransactionEventEnumType.ended,
                timestamp=now(),
                trigger_reason=TriggerReasonEnumType.stop_authorized,
                seq_no=2,
                transaction_info={"transactionId": tx_id, "stoppedReason": "Local"},
                id_token=id_token(f"TAG-{v.tag}-TX"),
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
        assert data["ocppVersion"] == v.subprotocol, data
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


async def test_connection_introspection(version, open_cp, cp_id, cp_call, admin):
    v = version
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        status, body, text = await admin.connection(cp_id)
        assert status == 200, f"HTTP {status}: {text}"
        assert body["chargePointId"] == cp_id, body
        assert body["ocppVersion"] == v.subprotocol, body


async def test_request_start_transaction_command(
    version, open_cp, cp_id, cp_call, admin
):
    v = version
    payload = {
        "idToken": id_token(f"TAG-{v.tag}-REMOTE"),
        "remoteStartId": v.remote_start_id,
        "evseId": 1,
    }
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        answer = await admin.command(cp_id, "RequestStartTransaction", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("RequestStartTransaction") == [
            {
                "id_token": {"id_token": f"TAG-{v.tag}-REMOTE", "type": "ISO14443"},
                "remote_start_id": v.remote_start_id,
                "evse_id": 1,
            }
        ], cp.handled
        frames = cp.conn.received_calls("RequestStartTransaction")
        assert [f[3] for f in frames] == [payload], frames


async def test_reset_command(version, open_cp, cp_id, cp_call, admin):
    v = version
    payload = {"type": "Immediate"}
    async with open_cp(v.charge_point, cp_id, v.subprotocol) as cp:
        await boot(v, cp, cp_call)
        answer = await admin.command(cp_id, "Reset", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("Reset") == [{"type": "Immediate"}], cp.handled
        frames = cp.conn.received_calls("Reset")
        assert [f[3] for f in frames] == [payload], frames
