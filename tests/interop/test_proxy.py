"""The gateway behind a real HAProxy (Debian's `haproxy`, TCP mode) speaking PROXY
protocol v2: the client's own address reaches the gateway, and with TLS ended at HAProxy
(`send-proxy-v2-ssl-cn`) a profile 3 charge point from the PyPI `ocpp` package is
recognised by the certificate HAProxy verified.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl

import ocpp.v16
import ocpp.v201
import pytest
import websockets

from support.charge_points import admin, charge_point
from support.gateway import Gateway, gateway_binary, running, write_credentials
from support.pki import Pki
from support.process import Process, free_port, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_TIMEOUT_S = 15.0
CLIENT_ADDRESS = "127.0.0.9"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxied_gateway(tmp_path_factory):
    credentials = write_credentials(
        tmp_path_factory.mktemp("auth") / "credentials.jsonl", [{"id": "PX-3", "profile": 3}]
    )
    gw = Gateway(
        gateway_binary(),
        extra_env={
            "CPGW_LISTENER__PROXY_PROTOCOL": "true",
            "CPGW_LISTENER__TRUSTED_PROXIES": '["127.0.0.1"]',
            "CPGW_AUTH__CREDENTIALS_FILE": str(credentials),
            "CPGW_AUTH__UNKNOWN_CHARGE_POINTS": "unsecured",
            "CPGW_AUTH__FAILURE_BACKOFF_INITIAL": "0s",
            "CPGW_AUTH__FAILURE_BACKOFF_MAX": "0s",
        },
    )
    with running(gw):
        yield gw


@pytest.fixture(scope="module")
def haproxy(proxied_gateway, pki, tmp_path_factory):
    binary = shutil.which("haproxy")
    assert binary, "haproxy is installed by scripts/build-deps.sh"
    directory = tmp_path_factory.mktemp("haproxy")
    certificate, key = pki.server("rsa")
    combined = directory / "server.pem"
    combined.write_text(certificate.read_text() + key.read_text())
    plain_port, tls_port = free_port(), free_port()
    config = directory / "haproxy.cfg"
    config.write_text(
        f"""
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:{plain_port}
    default_backend gateway
frontend tls
    bind 127.0.0.1:{tls_port} ssl crt {combined} ca-file {pki.ca_file} verify optional
    default_backend gateway_ssl
backend gateway
    server gw {proxied_gateway.ocpp_addr} send-proxy-v2
backend gateway_ssl
    server gw {proxied_gateway.ocpp_addr} send-proxy-v2-ssl-cn
"""
    )
    process = Process("haproxy", [binary, "-f", str(config), "-db"])
    process.start()
    for port in (plain_port, tls_port):
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
            STEP_TIMEOUT_S,
            f"haproxy listening on {port}",
        )
    try:
        yield {"plain": plain_port, "tls": tls_port}
    finally:
        process.stop(10.0)


def connection(gw: Gateway, cp_id: str):
    status, body = admin(gw, "GET", f"/api/v1/connections/{cp_id}")
    assert status == 200, body
    return json.loads(body)


async def test_the_gateway_sees_the_clients_address_not_haproxys(proxied_gateway, haproxy):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((CLIENT_ADDRESS, 0))
    sock.connect(("127.0.0.1", haproxy["plain"]))
    sock.setblocking(False)
    client_port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{haproxy['plain']}/ocpp/PX-1"
    async with charge_point(ocpp.v16.ChargePoint, url, "ocpp1.6", sock=sock) as cp:
        await asyncio.wait_for(cp.call(ocpp.v16.call.Heartbeat()), STEP_TIMEOUT_S)
        peer = await asyncio.to_thread(connection, proxied_gateway, "PX-1")
        assert peer["peerAddress"] == f"{CLIENT_ADDRESS}:{client_port}"


async def test_profile_3_with_tls_ended_at_haproxy(proxied_gateway, haproxy, pki):
    url = f"wss://localhost:{haproxy['tls']}/ocpp/PX-3"

    def context(common_name):
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        certificate, key = pki.client(common_name)
        ctx.load_cert_chain(str(certificate), str(key))
        return ctx

    async with charge_point(ocpp.v201.ChargePoint, url, "ocpp2.0.1", ssl=context("PX-3")) as cp:
        result = await asyncio.wait_for(cp.call(ocpp.v201.call.Heartbeat()), STEP_TIMEOUT_S)
        assert result.current_time
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with charge_point(
            ocpp.v201.ChargePoint, url, "ocpp2.0.1", ssl=context("PX-other")
        ):
            pass
    assert refused.value.response.status_code == 401
