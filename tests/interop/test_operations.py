"""Run-time log control and per-charge-point debug traces, on the real binary.

The gateway's JSON log lines (stderr) are collected by the session's `gateway` fixture;
these tests read them back. A log line's position in that list is its order on stderr,
so "everything up to a marker line" is complete once the marker has been read.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, ConfigurationStatus, ResetStatus
from ocpp.v201 import ChargePoint as V201ChargePoint
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as call_result201
from ocpp.v201.enums import Action as Action201

pytestmark = pytest.mark.asyncio

LOG_WAIT_S = 10.0


class ChargePoint16(V16ChargePoint):
    @on(Action.reset)
    def on_reset(self, **kwargs):
        return call_result.Reset(status=ResetStatus.accepted)

    @on(Action.change_configuration)
    def on_change_configuration(self, **kwargs):
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)


class ChargePoint201(V201ChargePoint):
    @on(Action201.set_variables)
    def on_set_variables(self, set_variable_data, **kwargs):
        return call_result201.SetVariables(
            set_variable_result=[
                {
                    "attributeStatus": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
                for item in set_variable_data
            ]
        )


def _first_wins(pairs: list[tuple]) -> dict:
    """A JSON object whose repeated keys keep their first value (the log record's own
    `level`, not an event field of the same name), noting the repeats."""
    record: dict = {}
    for key, value in pairs:
        if key in record:
            record.setdefault("_duplicate_keys", []).append(key)
        else:
            record[key] = value
    return record


def records(gateway) -> list[dict]:
    """The gateway's log lines so far, parsed (lines that are not JSON objects skipped)."""
    out = []
    for line in gateway.log_text().splitlines():
        try:
            record = json.loads(line, object_pairs_hook=_first_wins)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def charge_point_of(record: dict) -> str | None:
    """The charge point a log line belongs to: its session span, or its own field."""
    for span in record.get("spans") or []:
        if isinstance(span, dict) and "charge_point_id" in span:
            return span["charge_point_id"]
    return record.get("charge_point_id")


def lines_for(gateway, cp_id: str, message: str) -> list[dict]:
    return [
        r for r in records(gateway) if r.get("message") == message and charge_point_of(r) == cp_id
    ]


async def wait_for_lines(gateway, predicate, what: str, timeout_s: float = LOG_WAIT_S) -> list[dict]:
    """Re-reads the log until predicate(records) returns a non-empty list."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = predicate(records(gateway))
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"no log line {what} within {timeout_s:.0f} s; last lines:\n{gateway.log_text(last=20)}"
            )
        await asyncio.sleep(0.05)


async def log_marker(gateway, admin) -> int:
    """Writes an INFO line through the admin API and waits until it has been read.
    Returns the number of log records up to and including it: every line the gateway
    wrote before it is in `records(gateway)[:n]`."""
    before = len(records(gateway))
    status, body, text = await admin.put("/api/v1/log-level", {"level": "info"})
    assert status == 200, text

    def marker(rs):
        hits = [i + 1 for i, r in enumerate(rs) if i >= before and r.get("message") == "log level changed"]
        return hits[-1:] if hits else []

    return (await wait_for_lines(gateway, marker, "'log level changed' (marker)"))[0]


def trace_path(cp_id: str) -> str:
    return f"/api/v1/charge-points/{urllib.parse.quote(cp_id, safe='')}/debug-trace"


# ---------------------------------------------------------------------------------------
# Log level
# ---------------------------------------------------------------------------------------


async def test_log_level_can_be_raised_to_debug_and_restored(gateway, admin, open_cp, cp_id, cp_call):
    status, body, text = await admin.get("/api/v1/log-level")
    assert status == 200, text
    assert body == {"level": "info"}, body  # the fixture starts the gateway without --log-level

    try:
        status, body, text = await admin.put("/api/v1/log-level", {"level": "debug"})
        assert (status, body) == (200, {"level": "debug"}), text
        status, body, text = await admin.get("/api/v1/log-level")
        assert (status, body) == (200, {"level": "debug"}), text

        async with open_cp(ChargePoint16, cp_id, "ocpp1.6") as cp:
            await cp_call(cp, call.BootNotification(charge_point_model="Ops", charge_point_vendor="PyOCPP"))
            answer = await admin.command(cp_id, "Reset", {"type": "Soft"})
            assert answer["status"] == "completed", answer

            # `sending CALL` is a DEBUG line of the charge point's session.
            sent = await wait_for_lines(
                gateway,
                lambda rs: [
                    r
                    for r in rs
                    if r.get("message") == "sending CALL" and charge_point_of(r) == cp_id
                ],
                f"'sending CALL' for {cp_id} at debug level",
            )
            assert sent[-1]["level"] == "DEBUG", sent[-1]
            assert sent[-1].get("action") == "Reset", sent[-1]

            # Back to info: the next command writes no DEBUG line.
            status, body, text = await admin.put("/api/v1/log-level", {"level": "info"})
            assert (status, body) == (200, {"level": "info"}), text
            sent_before = len(lines_for(gateway, cp_id, "sending CALL"))
            answer = await admin.command(cp_id, "Reset", {"type": "Hard"})
            assert answer["status"] == "completed", answer
            upto = await log_marker(gateway, admin)
            sent_after = [
                r
                for r in records(gateway)[:upto]
                if r.get("message") == "sending CALL" and charge_point_of(r) == cp_id
            ]
            assert len(sent_after) == sent_before, sent_after
    finally:
        status, _, text = await admin.put("/api/v1/log-level", {"level": "info"})
        assert status == 200, text

    status, body, text = await admin.get("/api/v1/log-level")
    assert (status, body) == (200, {"level": "info"}), text


async def test_log_level_changes_are_logged(gateway, admin):
    directives = "info,charge_point_gateway::admin=debug"
    status, _, text = await admin.put("/api/v1/log-level", {"level": directives})
    try:
        assert status == 200, text
        # Earlier tests changed the level too: wait for this change's own line.
        await wait_for_lines(
            gateway,
            lambda rs: [
                r
                for r in rs
                if r.get("message") == "log level changed"
                and r.get("level") == "INFO"
                and r.get("filter") == directives
            ],
            "'log level changed' with the new filter",
        )
        assert any(
            '"log level changed"' in line and f'"filter":"{directives}"' in line
            for line in gateway.log_text().splitlines()
        ), gateway.log_lines_matching("log level changed")
        status, body, text = await admin.get("/api/v1/log-level")
        assert body == {"level": directives}, text
    finally:
        status, _, text = await admin.put("/api/v1/log-level", {"level": "info"})
        assert status == 200, text


async def test_log_lines_have_no_duplicate_keys(gateway, admin):
    await log_marker(gateway, admin)
    duplicated = [r for r in records(gateway) if r.get("_duplicate_keys")]
    assert not duplicated, "\n".join(
        f"{r.get('message')!r} repeats {r['_duplicate_keys']}" for r in duplicated[:10]
    )


@pytest.mark.parametrize(
    "body",
    [
        {"level": "info,foo[bar"},  # not a directive
        {"level": "charge_point_gateway=loud"},  # not a level
        {"level": "["},
    ],
)
async def test_an_invalid_log_filter_is_refused(admin, body):
    status, answer, text = await admin.put("/api/v1/log-level", body)
    assert status == 400, text
    assert isinstance(answer, dict) and answer["error"].startswith("invalid log filter"), text
    status, answer, text = await admin.get("/api/v1/log-level")
    assert (status, answer) == (200, {"level": "info"}), text


@pytest.mark.parametrize(
    "body", [{"lvl": "debug"}, {"level": 3}, {"level": "debug", "extra": 1}, [], "debug", {"level": ""}, {"level": "  "}]
)
async def test_a_malformed_log_level_request_is_refused(admin, body):
    status, answer, text = await admin.put("/api/v1/log-level", body)
    assert status == 400, text
    assert answer == {"error": 'expected {"level": "<filter>"} with a non-empty filter'}, text
    status, answer, text = await admin.get("/api/v1/log-level")
    assert (status, answer) == (200, {"level": "info"}), text


# ---------------------------------------------------------------------------------------
# Debug traces
# ---------------------------------------------------------------------------------------


def trace_lines(gateway, cp_id: str, upto: int | None = None) -> list[dict]:
    rs = records(gateway)
    if upto is not None:
        rs = rs[:upto]
    return [r for r in rs if r.get("message") == "debug trace" and charge_point_of(r) == cp_id]


def frames(lines: list[dict], direction: str) -> list[list]:
    return [json.loads(r["frame"]) for r in lines if r.get("direction") == direction]


async def test_debug_trace_logs_frames_redacted_across_reconnects(gateway, admin, open_cp, cp_id, cp_call):
    secret = f"SECRET-{cp_id[-8:]}"
    status, body, text = await admin.put(trace_path(cp_id), {"minutes": 2})
    assert status == 200, text
    assert body["chargePointId"] == cp_id, body
    until = datetime.fromisoformat(body["until"].replace("Z", "+00:00"))
    expected = datetime.now(timezone.utc) + timedelta(minutes=2)
    assert abs((until - expected).total_seconds()) < 30, body
    try:
        status, body, text = await admin.get("/api/v1/debug-traces")
        assert status == 200, text
        assert {"chargePointId": cp_id, "until": body_until(body, cp_id)} in body["debugTraces"], body

        # First connection: every frame in both directions, at INFO, credentials hidden.
        async with open_cp(ChargePoint16, cp_id, "ocpp1.6") as cp:
            await cp_call(cp, call.BootNotification(charge_point_model="Ops", charge_point_vendor="PyOCPP"))
            await cp_call(cp, call.Authorize(id_tag=secret))
            answer = await admin.command(cp_id, "Reset", {"type": "Soft"})
            assert answer["status"] == "completed", answer
        upto = await log_marker(gateway, admin)
        lines = trace_lines(gateway, cp_id, upto)
        assert lines and all(r["level"] == "INFO" for r in lines), lines
        inbound, outbound = frames(lines, "in"), frames(lines, "out")
        assert [f[2] for f in inbound if f[0] == 2] == ["BootNotification", "Authorize"], inbound
        assert [f[0] for f in outbound].count(3) == 2, outbound  # both answers
        assert [f[2] for f in outbound if f[0] == 2] == ["Reset"], outbound  # the command
        assert [f[0] for f in inbound].count(3) == 1, inbound  # its answer
        authorize = next(f for f in inbound if f[0] == 2 and f[2] == "Authorize")
        assert authorize[3] == {"idTag": "***"}, authorize
        leaked = [line for line in gateway.log_text().splitlines() if secret in line]
        assert not leaked, "the idTag appears in the log:\n" + "\n".join(leaked)
        connections = {span["connection_id"] for r in lines for span in r["spans"] if "connection_id" in span}
        assert len(connections) == 1, connections

        # The trace belongs to the charge point id: a new connection is traced too.
        async with open_cp(ChargePoint16, cp_id, "ocpp1.6") as cp:
            await cp_call(cp, call.Heartbeat())
        upto = await log_marker(gateway, admin)
        lines = trace_lines(gateway, cp_id, upto)
        connections = {span["connection_id"] for r in lines for span in r["spans"] if "connection_id" in span}
        assert len(connections) == 2, connections
        assert any(f[0] == 2 and f[2] == "Heartbeat" for f in frames(lines, "in")), lines

        # Stopped: nothing more is traced.
        status, body, text = await admin.delete(trace_path(cp_id))
        assert (status, body) == (200, {"chargePointId": cp_id, "stopped": True}), text
        traced_so_far = len(trace_lines(gateway, cp_id))
        async with open_cp(ChargePoint16, cp_id, "ocpp1.6") as cp:
            await cp_call(cp, call.Heartbeat())
        upto = await log_marker(gateway, admin)
        assert len(trace_lines(gateway, cp_id, upto)) == traced_so_far
        status, body, text = await admin.get("/api/v1/debug-traces")
        assert cp_id not in [t["chargePointId"] for t in body["debugTraces"]], body
    finally:
        await admin.delete(trace_path(cp_id))

    status, body, text = await admin.delete(trace_path(cp_id))
    assert status == 404, text
    assert body == {"error": f"no debug trace for {cp_id}"}, text


def body_until(body: dict, cp_id: str) -> str | None:
    for trace in body.get("debugTraces") or []:
        if trace.get("chargePointId") == cp_id:
            return trace.get("until")
    return None


async def test_debug_trace_hides_the_2x_id_token_but_keeps_its_type(gateway, admin, open_cp, cp_id, cp_call):
    secret = f"SECRET-{cp_id[-8:]}"
    status, _, text = await admin.put(trace_path(cp_id), {"minutes": 1})
    assert status == 200, text
    try:
        async with open_cp(ChargePoint201, cp_id, "ocpp2.0.1") as cp:
            await cp_call(cp, call201.Authorize(id_token={"idToken": secret, "type": "ISO14443"}))
        upto = await log_marker(gateway, admin)
        inbound = frames(trace_lines(gateway, cp_id, upto), "in")
        authorize = next(f for f in inbound if f[0] == 2 and f[2] == "Authorize")
        assert authorize[3] == {"idToken": {"idToken": "***", "type": "ISO14443"}}, authorize
        leaked = [line for line in gateway.log_text().splitlines() if secret in line]
        assert not leaked, "the idToken appears in the log:\n" + "\n".join(leaked)
    finally:
        await admin.delete(trace_path(cp_id))




async def test_debug_trace_hides_the_1_6_authorization_key(gateway, admin, open_cp, cp_id, cp_call):
    secret = f"SECRET-{cp_id[-8:]}"
    status, _, text = await admin.put(trace_path(cp_id), {"minutes": 1})
    assert status == 200, text
    try:
        async with open_cp(ChargePoint16, cp_id, "ocpp1.6") as cp:
            await cp_call(cp, call.BootNotification(charge_point_model="Ops", charge_point_vendor="PyOCPP"))
            answer = await admin.command(cp_id, "ChangeConfiguration", {"key": "AuthorizationKey", "value": secret})
            assert answer["status"] == "completed", answer
        await log_marker(gateway, admin)
        leaked = [line for line in gateway.log_text().splitlines() if secret in line]
        assert not leaked, "the AuthorizationKey appears in the log:\n" + "\n".join(leaked)
    finally:
        await admin.delete(trace_path(cp_id))


async def test_debug_trace_hides_2x_passwords_and_additional_tokens(gateway, admin, open_cp, cp_id, cp_call):
    password, token = f"PW-{cp_id[-8:]}", f"EXTRA-{cp_id[-8:]}"
    status, _, text = await admin.put(trace_path(cp_id), {"minutes": 1})
    assert status == 200, text
    try:
        async with open_cp(ChargePoint201, cp_id, "ocpp2.0.1") as cp:
            await cp_call(
                cp,
                call201.Authorize(
                    id_token={
                        "idToken": "TAG",
                        "type": "ISO14443",
                        "additionalInfo": [{"additionalIdToken": token, "type": "pin"}],
                    }
                ),
            )
            answer = await admin.command(
                cp_id,
                "SetVariables",
                {
                    "setVariableData": [
                        {
                            "attributeValue": password,
                            "component": {"name": "SecurityCtrlr"},
                            "variable": {"name": "BasicAuthPassword"},
                        }
                    ]
                },
            )
            assert answer["status"] == "completed", answer
        await log_marker(gateway, admin)
        leaked = [
            line for line in gateway.log_text().splitlines() if password in line or token in line
        ]
        assert not leaked, "secrets appear in the log:\n" + "\n".join(leaked)
    finally:
        await admin.delete(trace_path(cp_id))


async def test_a_trace_can_start_before_the_charge_point_connects_and_is_listed(admin, cp_id):
    status, body, text = await admin.put(trace_path(cp_id), {"minutes": 60})
    assert status == 200, text
    try:
        status, listed, text = await admin.get("/api/v1/debug-traces")
        assert status == 200, text
        assert {"chargePointId": cp_id, "until": body["until"]} in listed["debugTraces"], listed
        # Starting again replaces the end time.
        status, again, text = await admin.put(trace_path(cp_id), {"minutes": 1})
        assert status == 200, text
        assert again["until"] < body["until"], (again, body)
        status, listed, text = await admin.get("/api/v1/debug-traces")
        assert [t for t in listed["debugTraces"] if t["chargePointId"] == cp_id] == [again], listed
    finally:
        await admin.delete(trace_path(cp_id))


@pytest.mark.parametrize(
    "body", [{"minutes": 0}, {"minutes": 61}, {"minutes": 1.5}, {"minutes": "5"}, {}, {"minutes": 1, "x": 1}]
)
async def test_an_invalid_debug_trace_request_is_refused(admin, cp_id, body):
    status, answer, text = await admin.put(trace_path(cp_id), body)
    assert status == 400, text
    assert answer == {"error": 'expected {"minutes": 1..60}'}, text
    status, listed, text = await admin.get("/api/v1/debug-traces")
    assert cp_id not in [t["chargePointId"] for t in listed["debugTraces"]], listed
