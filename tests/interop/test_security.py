"""Security profile 1 with independent OCPP peers: the PyPI `ocpp` package's charge
points authenticating with HTTP Basic credentials (sent by `websockets` from the URL's
user info), refused with a wrong password, and taking a rotated password in 1.6
(ChangeConfiguration of AuthorizationKey, hex-encoded) and 2.0.1 (SetVariables of
SecurityCtrlr.BasicAuthPassword).

The gateway is its own process here, with a credentials file whose hashes come from the
binary's own `hash-password` tool.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse

import ocpp.v16
import ocpp.v201
import pytest
import websockets
from ocpp.routing import on

from support.charge_points import admin, charge_point
from support.gateway import Gateway, gateway_binary, running, write_credentials

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_TIMEOUT_S = 15.0
PASSWORD_16 = "Interop16Password01"  # 19 bytes: within 1.6's 16 to 20
PASSWORD_201 = "Interop201PasswordOfThirtyTwoChars"


def hash_password(password: str) -> str:
    done = subprocess.run(
        [str(gateway_binary()), "hash-password"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    phc = done.stdout.strip()
    assert phc.startswith("$argon2id$"), done
    assert password not in done.stdout + done.stderr
    return phc


@pytest.fixture(scope="module")
def secured_gateway(tmp_path_factory):
    credentials = tmp_path_factory.mktemp("auth") / "credentials.jsonl"
    records = [
        {"id": "SEC-16", "profile": 1, "password_hash": hash_password(PASSWORD_16)},
        {"id": "SEC-201", "profile": 1, "password_hash": hash_password(PASSWORD_201)},
        {"id": "SEC-TLS", "profile": 2, "password_hash": hash_password(PASSWORD_16)},
    ]
    write_credentials(credentials, records)
    gw = Gateway(
        gateway_binary(),
        extra_env={
            "CPGW_AUTH__CREDENTIALS_FILE": str(credentials),
            # A refusal below must not turn the next attempt into a 429.
            "CPGW_AUTH__FAILURE_BACKOFF_INITIAL": "0s",
            "CPGW_AUTH__FAILURE_BACKOFF_MAX": "0s",
        },
    )
    with running(gw):
        yield gw


def url(gw: Gateway, cp_id: str, password: str | None) -> str:
    userinfo = f"{cp_id}:{urllib.parse.quote(password, safe='')}@" if password else ""
    return f"ws://{userinfo}{gw.ocpp_addr}/ocpp/{cp_id}"


async def refused_status(gw: Gateway, cp_id: str, password: str | None, subprotocol: str) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        ws = await websockets.connect(
            url(gw, cp_id, password), subprotocols=[subprotocol], proxy=None,
            open_timeout=STEP_TIMEOUT_S,
        )
        await ws.close()
    return refused.value.response.status_code


class ChargePoint16(ocpp.v16.ChargePoint):
    """Takes a new AuthorizationKey, answering `status`."""

    answer = ocpp.v16.enums.ConfigurationStatus.accepted

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.authorization_keys: list[str] = []

    @on(ocpp.v16.enums.Action.change_configuration)
    def on_change_configuration(self, key, value):
        assert key == "AuthorizationKey"
        self.authorization_keys.append(value)
        return ocpp.v16.call_result.ChangeConfiguration(status=self.answer)


class ChargePoint201(ocpp.v201.ChargePoint):
    """Takes a new BasicAuthPassword."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passwords: list[str] = []

    @on(ocpp.v201.enums.Action.set_variables)
    def on_set_variables(self, set_variable_data):
        results = []
        for item in set_variable_data:
            assert item["component"]["name"] == "SecurityCtrlr"
            assert item["variable"]["name"] == "BasicAuthPassword"
            self.passwords.append(item["attribute_value"])
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return ocpp.v201.call_result.SetVariables(set_variable_result=results)


def connected(gw: Gateway, cp_class, cp_id: str, password: str, subprotocol: str):
    return charge_point(cp_class, url(gw, cp_id, password), subprotocol)


async def set_password(gw: Gateway, cp_id: str, password: str):
    """Gives `cp_id` a known password, whatever another test rotated it to."""
    status, body = await asyncio.to_thread(
        admin, gw, "PUT", f"/api/v1/charge-points/{cp_id}/credentials",
        {"profile": 1, "password": password},
    )
    assert status == 200, body


async def test_basic_credentials_let_a_16_charge_point_in_and_a_wrong_password_does_not(
    secured_gateway,
):
    gw = secured_gateway
    await set_password(gw, "SEC-16", PASSWORD_16)
    async with connected(gw, ChargePoint16, "SEC-16", PASSWORD_16, "ocpp1.6") as cp:
        result = await asyncio.wait_for(
            cp.call(ocpp.v16.call.Heartbeat()), STEP_TIMEOUT_S
        )
        assert result.current_time
    assert await refused_status(gw, "SEC-16", "WrongPassword0000", "ocpp1.6") == 401
    assert await refused_status(gw, "SEC-16", None, "ocpp1.6") == 401
    assert await refused_status(gw, "NO-SUCH-CP", PASSWORD_16, "ocpp1.6") == 401
    # Profile 2 needs TLS: the right password on the plain listener is still refused.
    assert await refused_status(gw, "SEC-TLS", PASSWORD_16, "ocpp1.6") == 401


async def rotate(gw: Gateway, cp_id: str):
    return await asyncio.to_thread(
        admin, gw, "POST", f"/api/v1/charge-points/{cp_id}/credentials/rotate"
    )


async def test_rotation_in_16_hands_the_charge_point_a_new_authorization_key(
    secured_gateway,
):
    gw = secured_gateway
    await set_password(gw, "SEC-16", PASSWORD_16)
    async with connected(gw, ChargePoint16, "SEC-16", PASSWORD_16, "ocpp1.6") as cp:
        status, body = await rotate(gw, "SEC-16")
        assert status == 200, body
        assert json.loads(body)["result"] == "accepted"
        [hex_key] = cp.authorization_keys
        new_password = bytes.fromhex(hex_key).decode()
        assert len(new_password) == 20
        assert new_password not in body
    async with connected(gw, ChargePoint16, "SEC-16", new_password, "ocpp1.6") as cp:
        await asyncio.wait_for(cp.call(ocpp.v16.call.Heartbeat()), STEP_TIMEOUT_S)
    # Once the new password was used, the old one is retired (in the background).
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    while await refused_status_or_ok(gw, "SEC-16", PASSWORD_16) != 401:
        assert asyncio.get_running_loop().time() < deadline, "old password still accepted"
        await asyncio.sleep(0.05)


async def refused_status_or_ok(gw: Gateway, cp_id: str, password: str) -> int:
    try:
        ws = await websockets.connect(
            url(gw, cp_id, password), subprotocols=["ocpp1.6"], proxy=None,
            open_timeout=STEP_TIMEOUT_S,
        )
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code
    await ws.close()
    return 101


async def test_a_rejected_rotation_in_16_keeps_the_old_password(secured_gateway):
    gw = secured_gateway

    class Rejecting(ChargePoint16):
        answer = ocpp.v16.enums.ConfigurationStatus.rejected

    await set_password(gw, "SEC-16", PASSWORD_16)
    async with connected(gw, Rejecting, "SEC-16", PASSWORD_16, "ocpp1.6") as cp:
        status, body = await rotate(gw, "SEC-16")
        assert status == 409, body
        assert json.loads(body)["result"] == "refused"
        [hex_key] = cp.authorization_keys
    assert await refused_status(gw, "SEC-16", bytes.fromhex(hex_key).decode(), "ocpp1.6") == 401
    async with connected(gw, ChargePoint16, "SEC-16", PASSWORD_16, "ocpp1.6"):
        pass


async def test_rotation_in_201_sets_basic_auth_password(secured_gateway):
    gw = secured_gateway
    await set_password(gw, "SEC-201", PASSWORD_201)
    async with connected(gw, ChargePoint201, "SEC-201", PASSWORD_201, "ocpp2.0.1") as cp:
        status, body = await rotate(gw, "SEC-201")
        assert status == 200, body
        [new_password] = cp.passwords
        assert len(new_password) == 40 and new_password.isalnum()
    async with connected(gw, ChargePoint201, "SEC-201", new_password, "ocpp2.0.1") as cp:
        result = await asyncio.wait_for(
            cp.call(ocpp.v201.call.Heartbeat()), STEP_TIMEOUT_S
        )
        assert result.current_time
