"""The wss:// listener with independent clients: the PyPI `ocpp` package's charge points
over TLS with Basic credentials (profile 2) and with a client certificate (profile 3),
Python's `ssl` (OpenSSL) offering one cipher suite at a time, an old TLS version, and a
resumed session. Certificates are made with the `openssl` command-line tool.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess

import ocpp.v16
import ocpp.v201
import pytest
import websockets

from support.charge_points import charge_point, metric, metric_reaches
from support.gateway import Gateway, gateway_binary, running, write_credentials
from support.pki import Pki, certificates_setting

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_TIMEOUT_S = 15.0
PASSWORD = "TlsInteropPassword01"
REQUIRED_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
]


def hash_password(password: str) -> str:
    done = subprocess.run(
        [str(gateway_binary()), "hash-password"], input=password + "\n",
        capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gateway(pki, tmp_path_factory):
    rsa, ecdsa = pki.server("rsa"), pki.server("ecdsa")
    credentials = tmp_path_factory.mktemp("auth") / "credentials.jsonl"
    records = [
        {"id": "TLS-2", "profile": 2, "password_hash": hash_password(PASSWORD)},
        {"id": "TLS-3", "profile": 3},
    ]
    write_credentials(credentials, records)
    gw = Gateway(
        gateway_binary(),
        extra_env={
            "CPGW_TLS__ADDRESS": "127.0.0.1:0",
            "CPGW_TLS__CERTIFICATES": certificates_setting(rsa, ecdsa),
            "CPGW_TLS__CLIENT_CA_FILE": str(pki.ca_file),
            "CPGW_AUTH__CREDENTIALS_FILE": str(credentials),
            "CPGW_AUTH__FAILURE_BACKOFF_INITIAL": "0s",
            "CPGW_AUTH__FAILURE_BACKOFF_MAX": "0s",
        },
        tls=True,
    )
    with running(gw):
        yield gw


def client_context(pki: Pki, certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if certificate:
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def port(gw: Gateway) -> int:
    return int(gw.tls_addr.rsplit(":", 1)[1])


def wss(gw: Gateway, cp_id: str) -> str:
    return f"wss://localhost:{port(gw)}/ocpp/{cp_id}"


def basic(cp_id: str, password: str) -> dict:
    token = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_profile_2_a_16_charge_point_over_wss_with_basic_credentials(tls_gateway, pki):
    async with charge_point(
        ocpp.v16.ChargePoint, wss(tls_gateway, "TLS-2"), "ocpp1.6", ssl=client_context(pki),
        additional_headers=basic("TLS-2", PASSWORD),
    ) as cp:
        result = await asyncio.wait_for(cp.call(ocpp.v16.call.Heartbeat()), STEP_TIMEOUT_S)
        assert result.current_time
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with charge_point(
            ocpp.v16.ChargePoint, wss(tls_gateway, "TLS-2"), "ocpp1.6", ssl=client_context(pki),
            additional_headers=basic("TLS-2", "WrongPassword0000000"),
        ):
            pass
    assert refused.value.response.status_code == 401


async def test_profile_3_a_201_charge_point_with_a_client_certificate(tls_gateway, pki):
    certificate = pki.client("TLS-3", "Interop Charging")
    async with charge_point(
        ocpp.v201.ChargePoint, wss(tls_gateway, "TLS-3"), "ocpp2.0.1",
        ssl=client_context(pki, certificate),
    ) as cp:
        result = await asyncio.wait_for(cp.call(ocpp.v201.call.Heartbeat()), STEP_TIMEOUT_S)
        assert result.current_time
    # Another charge point's certificate, and none at all, are refused.
    other = pki.client("TLS-other")
    for context in (client_context(pki, other), client_context(pki)):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with charge_point(
                ocpp.v201.ChargePoint, wss(tls_gateway, "TLS-3"), "ocpp2.0.1", ssl=context
            ):
                pass
        assert refused.value.response.status_code == 401


def handshake(gw: Gateway, context: ssl.SSLContext, session=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port(gw)), timeout=STEP_TIMEOUT_S)
    return context.wrap_socket(raw, server_hostname="localhost", session=session)


@pytest.mark.parametrize("suite", REQUIRED_SUITES)
async def test_each_required_cipher_suite_is_negotiated_alone(tls_gateway, pki, suite):
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    with handshake(tls_gateway, context) as tls:
        assert tls.cipher()[0] == suite
        assert tls.version() == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_is_refused(tls_gateway, pki):
    series = 'ocppgw_tls_handshakes_total{result="failed"}'
    before = metric(tls_gateway, series)
    context = client_context(pki)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(tls_gateway, context).close()
    # Refused by the gateway, not by this client's own OpenSSL.
    await metric_reaches(tls_gateway, series, before + 1)


async def test_a_reconnecting_client_resumes_its_session(tls_gateway, pki):
    series = 'ocppgw_tls_handshakes_total{result="resumed"}'
    before = metric(tls_gateway, series)
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(tls_gateway, context) as first:
        session = first.session
        assert not first.session_reused
    with handshake(tls_gateway, context, session=session) as second:
        assert second.session_reused
    assert metric(tls_gateway, series) == before + 1


@pytest.fixture(scope="module")
def revoking_gateway(tmp_path_factory):
    """A gateway whose CA has revoked one charge point's certificate."""
    pki = Pki(tmp_path_factory.mktemp("crl-pki"), name="Revoking CA")
    server = pki.server("ecdsa")
    revoked = pki.client("CRL-3")
    kept = pki.client("CRL-3")
    crl = pki.revocation_list([revoked[0]])
    credentials = write_credentials(
        tmp_path_factory.mktemp("crl-auth") / "credentials.jsonl", [{"id": "CRL-3", "profile": 3}]
    )
    gw = Gateway(
        gateway_binary(),
        extra_env={
            "CPGW_TLS__ADDRESS": "127.0.0.1:0",
            "CPGW_TLS__CERTIFICATES": certificates_setting(server),
            "CPGW_TLS__CLIENT_CA_FILE": str(pki.ca_file),
            "CPGW_TLS__CRL_FILE": str(crl),
            "CPGW_AUTH__CREDENTIALS_FILE": str(credentials),
        },
        tls=True,
    )
    with running(gw):
        yield gw, pki, revoked, kept


async def test_a_revoked_certificate_is_refused(revoking_gateway):
    gw, pki, revoked, kept = revoking_gateway
    async with charge_point(
        ocpp.v201.ChargePoint, wss(gw, "CRL-3"), "ocpp2.0.1", ssl=client_context(pki, kept)
    ) as cp:
        await asyncio.wait_for(cp.call(ocpp.v201.call.Heartbeat()), STEP_TIMEOUT_S)
    series = 'ocppgw_tls_handshakes_total{result="certificate_refused"}'
    before = metric(gw, series)
    # The refusal arrives as a TLS alert: during the handshake (TLS 1.2) or on the first
    # read after it (TLS 1.3, during the WebSocket upgrade).
    with pytest.raises((ssl.SSLError, OSError, websockets.exceptions.WebSocketException)):
        async with charge_point(
            ocpp.v201.ChargePoint, wss(gw, "CRL-3"), "ocpp2.0.1", ssl=client_context(pki, revoked)
        ):
            pass
    await metric_reaches(gw, series, before + 1)
