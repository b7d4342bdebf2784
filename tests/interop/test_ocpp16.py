"""OCPP 1.6J interop: the PyPI `ocpp` package's v16 ChargePoint against the gateway."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    RegistrationStatus,
    RemoteStartStopStatus,
    ResetStatus,
)

from support.events import MESSAGE_RECEIVED, assert_cloudevent, message_events

pytestmark = pytest.mark.asyncio

SUBPROTOCOL = "ocpp1.6"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def new_id() -> str:
    return str(uuid.uuid4())


class ChargePoint16(V16ChargePoint):
    """A 1.6 charge point that accepts remote starts and resets, and records them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handled: dict[str, list[dict]] = {}

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction_16(self, **kwargs):
        self.handled.setdefault("RemoteStartTransaction", []).append(kwargs)
        return call_result.RemoteStartTransaction(
            status=RemoteStartStopStatus.accepted
        )

    @on(Action.reset)
    def on_reset_16(self, **kwargs):
        self.handled.setdefault("Reset", []).append(kwargs)
        return call_result.Reset(status=ResetStatus.accepted)


async def boot(cp, call_fn):
    result = await call_fn(
        cp,
        call.BootNotification(
            charge_point_model="InteropModel16",
            charge_point_vendor="PyOCPP",
            firmware_version="2.1.0",
        ),
    )
    assert result.status == RegistrationStatus.accepted
    return result


async def test_boot_notification(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        result = await boot(cp, cp_call)
        assert isinstance(result.interval, int) and not isinstance(
            result.interval, bool
        )
        assert result.interval > 0
        datetime.fromisoformat(result.current_time)


async def test_heartbeat(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        result = await cp_call(cp, call.Heartbeat())
        parsed = datetime.fromisoformat(result.current_time)
        assert parsed.year >= 2024


async def test_status_notification(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        for connector_id, status in ((0, ChargePointStatus.available),
                                     (1, ChargePointStatus.preparing)):
            result = await cp_call(
                cp,
                call.StatusNotification(
                    connector_id=connector_id,
                    error_code=ChargePointErrorCode.no_error,
                    status=status,
                    timestamp=now(),
                ),
            )
            assert isinstance(result, call_result.StatusNotification)


async def test_authorize(open_cp, cp_id, cp_call):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        result = await cp_call(cp, call.Authorize(id_tag="TAG-16-AUTH"))
        assert result.id_tag_info["status"] == AuthorizationStatus.accepted


async def test_transaction_and_events(open_cp, cp_id, cp_call, admin):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)

        start_id = new_id()
        start = await cp_call(
            cp,
            call.StartTransaction(
                connector_id=1, id_tag="TAG-16-TX", meter_start=1000, timestamp=now()
            ),
            start_id,
        )
        assert isinstance(start.transaction_id, int) and not isinstance(
            start.transaction_id, bool
        )
        assert start.id_tag_info["status"] == AuthorizationStatus.accepted
        tx_id = start.transaction_id

        meter_id = new_id()
        await cp_call(
            cp,
            call.MeterValues(
                connector_id=1,
                transaction_id=tx_id,
                meter_value=[
                    {
                        "timestamp": now(),
                        "sampledValue": [
                            {
                                "value": "1234",
                                "context": "Sample.Periodic",
                                "measurand": "Energy.Active.Import.Register",
                                "unit": "Wh",
                            },
                            {
                                "value": "31.5",
                                "context": "Sample.Periodic",
                                "measurand": "Temperature",
                                # Field quirk: the 1.6 schema has both spellings.
                                "unit": "Celcius",
                            },
                        ],
                    }
                ],
            ),
            meter_id,
        )

        stop_id = new_id()
        stop = await cp_call(
            cp,
            call.StopTransaction(
                meter_stop=2500,
                timestamp=now(),
                transaction_id=tx_id,
                id_tag="TAG-16-TX",
                reason="Local",
            ),
            stop_id,
        )
        assert isinstance(stop, call_result.StopTransaction)

        sent = {mid: cp.conn.sent_call(mid) for mid in (start_id, meter_id, stop_id)}

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

    for mid, frame in sent.items():
        data = by_id[mid]["data"]
        assert data["ocppVersion"] == SUBPROTOCOL, data
        assert data["messageType"] == "call", data
        assert data["action"] == frame[2], data
        assert data["payload"] == frame[3], (data["payload"], frame[3])

    assert by_id[start_id]["data"]["action"] == "StartTransaction"
    assert by_id[start_id]["data"]["payload"]["idTag"] == "TAG-16-TX"
    assert by_id[start_id]["data"]["payload"]["meterStart"] == 1000
    assert by_id[stop_id]["data"]["action"] == "StopTransaction"
    assert by_id[stop_id]["data"]["payload"]["transactionId"] == tx_id
    assert by_id[stop_id]["data"]["payload"]["meterStop"] == 2500
    units = [
        sv["unit"]
        for mv in by_id[meter_id]["data"]["payload"]["meterValue"]
        for sv in mv["sampledValue"]
    ]
    assert units == ["Wh", "Celcius"]


async def test_connection_introspection(open_cp, cp_id, cp_call, admin):
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        status, body, text = await admin.connection(cp_id)
        assert status == 200, f"HTTP {status}: {text}"
        assert body["chargePointId"] == cp_id, body
        assert body["ocppVersion"] == SUBPROTOCOL, body


async def test_remote_start_transaction_command(open_cp, cp_id, cp_call, admin):
    payload = {"idTag": "TAG-16-REMOTE", "connectorId": 1}
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        answer = await admin.command(cp_id, "RemoteStartTransaction", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("RemoteStartTransaction") == [
            {"id_tag": "TAG-16-REMOTE", "connector_id": 1}
        ], cp.handled
        frames = cp.conn.received_calls("RemoteStartTransaction")
        assert [f[3] for f in frames] == [payload], frames


async def test_reset_command(open_cp, cp_id, cp_call, admin):
    payload = {"type": "Soft"}
    async with open_cp(ChargePoint16, cp_id, SUBPROTOCOL) as cp:
        await boot(cp, cp_call)
        answer = await admin.command(cp_id, "Reset", payload)
        assert answer.get("status") == "completed", answer
        assert answer["response"]["status"] == "Accepted", answer

        assert cp.handled.get("Reset") == [{"type": "Soft"}], cp.handled
        frames = cp.conn.received_calls("Reset")
        assert [f[3] for f in frames] == [payload], frames
