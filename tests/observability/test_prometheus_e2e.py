"""End to end: the real gateway, a real Kafka-protocol broker and a real Prometheus.

One stack per module: tansu (in-memory storage) on a free loopback port, the gateway
binary (`$GATEWAY_BIN`, else `target/debug/charge-point-gateway`) on Kafka with its
metrics on `127.0.0.1:0`, and a Prometheus server that scrapes it every second as job
`charge-point-gateway` with the repository's rules loaded. A scripted session then
exercises the gateway: charge points of all three OCPP versions (boot, heartbeat, status,
authorize, a transaction), invalid frames, refused handshakes, commands through the admin
API (answered, refused by the charge point with a CALLERROR, and one that times out), a
command through Kafka answered by the charge point, and disconnects.

Then every query of the Grafana dashboard, with the dashboard's variables set to "All"
and to explicit values and `$__rate_interval` set to 15s (so short windows work), must
return at least one series from Prometheus. `promtool check metrics` reads a real scrape.

Needs tansu (`$TANSU_BIN`, else `tansu` on PATH or in ~/.cargo/bin), `prometheus` and
`promtool` (Debian's `prometheus` package; scripts/check-deploy.sh installs it) and
`confluent-kafka` (tests/observability/requirements.txt). A missing tool fails the tests;
they never skip. scripts/test.sh provides all of them.

Everything is bounded in time, and every process is stopped at the end, failure or not:
the gateway with SIGTERM (it must exit 0), then Prometheus and the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
import websockets

from dashboard_queries import dashboard_queries, load_dashboard
from support.gateway import Gateway, gateway_binary
from support.pki import Pki, certificates_setting
from support.process import Process, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "charge-point-gateway.json"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"

JOB = "charge-point-gateway"
# The dashboard's $__rate_interval for this test: 15 scrapes at the 1 s interval below,
# so rates have data a few seconds after the scenario.
RATE_INTERVAL = "15s"
SUPPORTED_VERSIONS = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]

# Time bounds.
START_TIMEOUT_S = 30.0  # each process: listening / ready
STOP_TIMEOUT_S = 30.0  # each process: exit after SIGTERM
STEP_TIMEOUT_S = 15.0  # one OCPP round trip, HTTP request or Kafka step
SCENARIO_TIMEOUT_S = 120.0  # the whole scripted session
SCRAPES_TIMEOUT_S = 60.0  # Prometheus has scraped enough
QUERIES_TIMEOUT_S = 90.0  # every dashboard query has data
MIN_SCRAPES = 5

# Never send loopback traffic through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def http(method: str, url: str, body=None, headers: dict | None = None, timeout=STEP_TIMEOUT_S):
    """(status, text) of one HTTP request; HTTP errors are answers, not exceptions."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def find_tool(name: str, env_var: str | None = None) -> str:
    candidates = []
    if env_var and os.environ.get(env_var):
        candidates.append(os.environ[env_var])
    found = shutil.which(name)
    if found:
        candidates.append(found)
    candidates.append(str(Path.home() / ".cargo" / "bin" / name))
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"`{name}` not found (looked at {candidates}); scripts/test.sh installs it "
        "(tansu with cargo install, prometheus/promtool via scripts/check-deploy.sh)",
        pytrace=False,
    )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------
# The stack: broker, gateway, Prometheus
# ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    broker: str = ""
    ocpp: str = ""
    admin: str = ""
    metrics: str = ""
    prometheus: str = ""
    processes: dict = field(default_factory=dict)
    # Unix times of the scripted session's start and end.
    scenario_started: float = 0.0
    scenario_ended: float = 0.0

    # -- Prometheus API ----------------------------------------------------------------

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The result vector of an instant query (now, or at Unix time `at`); fails on
        any API error."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
        status, text = http("GET", url)
        assert status == 200, f"query {expr!r}: HTTP {status}: {text}"
        body = json.loads(text)
        assert body.get("status") == "success", f"query {expr!r}: {text}"
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def prometheus_api(self, path: str, params: dict | None = None):
        url = f"http://{self.prometheus}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        status, text = http("GET", url)
        assert status == 200, f"GET {path}: HTTP {status}: {text}"
        body = json.loads(text)
        assert body.get("status") == "success", f"GET {path}: {text}"
        return body["data"]

    # -- gateway -------------------------------------------------------------------------

    def admin_url(self, path: str) -> str:
        return f"http://{self.admin}{path}"

    def scrape(self, accept: str | None = None) -> tuple[int, str, str]:
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(f"http://{self.metrics}/metrics", headers=headers)
        with _OPENER.open(request, timeout=STEP_TIMEOUT_S) as response:
            return (
                response.status,
                response.headers.get("Content-Type", ""),
                response.read().decode("utf-8"),
            )


def start_broker(stack: Stack) -> None:
    tansu = find_tool("tansu", "TANSU_BIN")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = Process(
        "tansu",
        [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        log=stack.workdir / "tansu.log",
    )
    stack.processes["tansu"] = process
    process.start()
    stack.broker = f"127.0.0.1:{port}"

    def listening():
        assert process.running(), f"tansu exited:\n{process.log_text(last=30)}"
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(listening, START_TIMEOUT_S, f"tansu to listen on {stack.broker}")


def start_gateway(stack: Stack) -> None:
    # The wss:// listener is on too, so that the TLS panels have their series.
    certificate, key = Pki(stack.workdir / "pki").server("ecdsa")
    gateway = Gateway(
        gateway_binary(),
        tls=True,
        extra_env={
            "CPGW_TLS__ADDRESS": "127.0.0.1:0",
            "CPGW_TLS__CERTIFICATES": certificates_setting((certificate, key)),
            "CPGW_NODE_ID": "e2e-gateway",
            "CPGW_KAFKA__BROKERS": stack.broker,
            "CPGW_KAFKA__TOPIC_REPLICATION": "1",
            "CPGW_KAFKA__TOPIC_PARTITIONS": "1",
            "CPGW_KAFKA__DELIVERY_TIMEOUT": "3s",
            # Authorize, StartTransaction and DataTransfer answered by the local responder
            # (nobody plays the backend here).
            "CPGW_BACKEND__ACTIONS": "[]",
            "CPGW_SHUTDOWN__DRAIN_TIME": "1s",
        },
        log=stack.workdir / "gateway.log",
    )
    stack.processes["gateway"] = gateway
    gateway.start()
    stack.ocpp, stack.admin, stack.metrics = gateway.ocpp_addr, gateway.admin_addr, gateway.metrics_addr

    def ready():
        assert gateway.running(), f"gateway exited:\n{gateway.log_text(last=30)}"
        return http("GET", stack.admin_url("/readyz"), timeout=2)[0] == 200

    wait_until(ready, START_TIMEOUT_S, "gateway /readyz to answer 200 (Kafka topics created)")


def start_prometheus(stack: Stack) -> None:
    prometheus = find_tool("prometheus")
    rule_files = sorted(RULES_DIR.glob("*.rules.yml"))
    assert rule_files, f"no *.rules.yml in {RULES_DIR}"
    config = stack.workdir / "prometheus.yml"
    # JSON is YAML: no YAML library needed.
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(path) for path in rule_files],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [stack.metrics]}],
                    }
                ],
            },
            indent=2,
        )
    )
    port = free_port()
    stack.prometheus = f"127.0.0.1:{port}"
    process = Process(
        "prometheus",
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={stack.workdir / 'tsdb'}",
            f"--web.listen-address={stack.prometheus}",
            "--log.level=warn",
        ],
        log=stack.workdir / "prometheus.log",
    )
    stack.processes["prometheus"] = process
    process.start()

    def ready():
        assert process.running(), f"prometheus exited:\n{process.log_text(last=30)}"
        return http("GET", f"http://{stack.prometheus}/-/ready", timeout=2)[0] == 200

    wait_until(ready, START_TIMEOUT_S, f"prometheus /-/ready on {stack.prometheus}")


# Where the running module's process logs are (for failure messages).
STACK_LOGS: list = ["<not started>"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    STACK_LOGS[0] = workdir
    stack = Stack(workdir=workdir)
    gateway_ran = False
    failure = None
    try:
        start_broker(stack)
        start_gateway(stack)
        gateway_ran = True
        start_prometheus(stack)
        yield stack
    finally:
        # The gateway first: it flushes to the broker on the way out.
        for name in ("gateway", "prometheus", "tansu"):
            process = stack.processes.get(name)
            if process is None:
                continue
            code = process.stop(STOP_TIMEOUT_S)
            if name == "gateway" and gateway_ran and code != 0:
                failure = (
                    f"gateway exited with {code if code is not None else 'SIGKILL after a hang'} "
                    "after SIGTERM (graceful shutdown should exit 0). Last log lines:\n"
                    + process.log_text(last=40)
                )
    if failure:
        pytest.fail(failure, pytrace=False)


# ---------------------------------------------------------------------------------------
# A scripted OCPP-J charge point (plain websockets, so it can also send broken frames)
# ---------------------------------------------------------------------------------------


class CallErrorReceived(Exception):
    def __init__(self, frame: list):
        super().__init__(f"CALLERROR {frame}")
        self.code = frame[2] if len(frame) > 2 else None


class ScriptedChargePoint:
    """Sends CALLs and waits for their answers; answers the gateway's CALLs.

    `answers` maps an action to the CALLRESULT payload to send; every other action gets
    a CALLERROR NotImplemented. With `silent`, the gateway's CALLs are recorded and not
    answered (see `received_calls`).
    """

    def __init__(self, ws, cp_id: str, answers: dict | None = None, silent: bool = False):
        self.ws = ws
        self.cp_id = cp_id
        self.answers = answers or {}
        self.silent = silent
        self.received_calls: list[list] = []
        self.unmatched: list[list] = []
        self._pending: dict[str, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read(), name=f"reader-{cp_id}")

    @classmethod
    async def connect(cls, stack: Stack, cp_id: str, subprotocol: str, **kwargs):
        ws = await websockets.connect(
            f"ws://{stack.ocpp}/ocpp/{urllib.parse.quote(cp_id, safe='')}",
            subprotocols=[subprotocol],
            proxy=None,
            open_timeout=STEP_TIMEOUT_S,
            ping_interval=None,
        )
        assert ws.subprotocol == subprotocol, (ws.subprotocol, subprotocol)
        return cls(ws, cp_id, **kwargs)

    async def _read(self):
        try:
            async for text in self.ws:
                try:
                    frame = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(frame, list) or len(frame) < 3:
                    continue
                kind, message_id = frame[0], frame[1]
                if kind == 2:
                    self.received_calls.append(frame)
                    if self.silent:
                        continue
                    action = frame[2]
                    if action in self.answers:
                        reply = [3, message_id, self.answers[action]]
                    else:
                        reply = [4, message_id, "NotImplemented", f"{action} is not supported here", {}]
                    await self.ws.send(json.dumps(reply))
                elif kind in (3, 4) and message_id in self._pending:
                    future = self._pending.pop(message_id)
                    if not future.done():
                        future.set_result(frame)
                else:
                    # e.g. the CALLERROR answering a frame that had no usable message id
                    self.unmatched.append(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.cp_id}: connection closed"))

    async def call(self, action: str, payload: dict) -> dict:
        message_id = str(uuid.uuid4())
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        frame = await asyncio.wait_for(future, STEP_TIMEOUT_S)
        if frame[0] == 4:
            raise CallErrorReceived(frame)
        return frame[2]

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


async def admin_request(stack: Stack, method: str, path: str, body=None) -> tuple[int, dict | None]:
    status, text = await asyncio.wait_for(
        asyncio.to_thread(http, method, stack.admin_url(path), body), STEP_TIMEOUT_S + 5
    )
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, None


async def admin_command(stack: Stack, cp_id: str, action: str, payload: dict, timeout_s: int = 10):
    path = f"/api/v1/charge-points/{urllib.parse.quote(cp_id, safe='')}/commands"
    return await admin_request(
        stack, "POST", path, {"action": action, "payload": payload, "timeoutSeconds": timeout_s}
    )


# ---------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------


def kafka_command_roundtrip(stack: Stack, cp_id: str) -> dict:
    """Produces a Reset command to ocpp.commands and returns its result's `data`."""
    try:
        from confluent_kafka import Consumer, Producer, TopicPartition
    except ImportError:  # pragma: no cover - an environment problem, reported clearly
        pytest.fail(
            "confluent-kafka is missing: pip install -r tests/observability/requirements.txt",
            pytrace=False,
        )
    results_topic = "ocpp.command-results"
    results = Consumer(
        {
            "bootstrap.servers": stack.broker,
            "group.id": f"e2e-results-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        # Start at the current end of every partition, before producing, so a fast
        # result is not missed.
        metadata = results.list_topics(results_topic, timeout=STEP_TIMEOUT_S)
        partitions = metadata.topics[results_topic].partitions
        assert partitions, f"{results_topic} has no partitions"
        assignment = []
        for p in partitions:
            _, high = results.get_watermark_offsets(
                TopicPartition(results_topic, p), timeout=STEP_TIMEOUT_S
            )
            assignment.append(TopicPartition(results_topic, p, high))
        results.assign(assignment)

        command_id = str(uuid.uuid4())
        command = {
            "commandId": command_id,
            "chargePointId": cp_id,
            "action": "Reset",
            "payload": {"type": "Soft"},
            "timeoutSeconds": 10,
        }
        producer = Producer(
            {"bootstrap.servers": stack.broker, "enable.idempotence": True, "message.timeout.ms": 10000}
        )
        producer.produce("ocpp.commands", key=cp_id, value=json.dumps(command))
        remaining = producer.flush(STEP_TIMEOUT_S)
        assert remaining == 0, "the command record was not delivered to the broker"

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = results.poll(0.5)
            if message is None or message.error():
                continue
            data = json.loads(message.value())["data"]
            if data.get("commandId") == command_id:
                return data
        raise AssertionError(f"no result for Kafka command {command_id} within 30 s")
    finally:
        results.close()


# What the scripted charge points answer to the gateway's CALLs (others: NotImplemented).
ANSWERS = {"Reset": {"status": "Accepted"}}


async def session_16(stack: Stack, cp_id: str) -> None:
    cp = await ScriptedChargePoint.connect(stack, cp_id, "ocpp1.6", answers=ANSWERS)
    try:
        boot = await cp.call("BootNotification", {"chargePointVendor": "E2E", "chargePointModel": "E2E-16"})
        assert boot["status"] == "Accepted", boot
        await cp.call("Heartbeat", {})
        await cp.call(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": now()},
        )
        # A timestamp without a time zone is accepted as UTC (and counted).
        await cp.call(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": "2025-05-01T10:00:00"},
        )
        auth = await cp.call("Authorize", {"idTag": "TAG-E2E-16"})
        assert auth["idTagInfo"]["status"] == "Accepted", auth
        started = await cp.call(
            "StartTransaction", {"connectorId": 1, "idTag": "TAG-E2E-16", "meterStart": 1000, "timestamp": now()}
        )
        tx = started["transactionId"]
        await cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [{"timestamp": now(), "sampledValue": [{"value": "1500"}]}],
            },
        )
        await cp.call("StopTransaction", {"transactionId": tx, "meterStop": 2000, "timestamp": now()})
        await cp.call("DataTransfer", {"vendorId": "E2E"})

        # A CALL that fails its schema, and one of an action 1.6 does not have: both are
        # answered with CALLERRORs by the gateway.
        with pytest.raises(CallErrorReceived):
            await cp.call("Heartbeat", {"unexpected": True})
        with pytest.raises(CallErrorReceived):
            await cp.call("NoSuchAction", {})
        # Frames rejected before dispatch (fewer than session.bad_message_limit in a row).
        for text in ["this is not JSON", "{}", '[9, "x", "Heartbeat", {}]', '[2, "only-three", "Heartbeat"]']:
            await cp.send_raw(text)
        await cp.call("Heartbeat", {})  # still connected

        # Commands through the admin API: answered, and refused by the charge point.
        status, body = await admin_command(stack, cp_id, "Reset", {"type": "Soft"})
        assert (status, body["status"]) == (200, "completed"), body
        status, body = await admin_command(stack, cp_id, "ClearCache", {})
        assert (status, body["status"]) == (200, "callError"), body
        assert body["error"]["code"] == "NotImplemented", body

        # A command through Kafka, answered by the charge point.
        result = await asyncio.wait_for(asyncio.to_thread(kafka_command_roundtrip, stack, cp_id), 60)
        assert result["status"] == "completed", result
        assert result["response"] == {"status": "Accepted"}, result
        assert sum(1 for f in cp.received_calls if f[2] == "Reset") == 2, cp.received_calls
    finally:
        await cp.close()  # closed_by_charge_point


def v2_transaction(event_type: str, tx: str, seq_no: int, trigger: str, **extra) -> dict:
    payload = {
        "eventType": event_type,
        "timestamp": now(),
        "triggerReason": trigger,
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": tx},
    }
    payload.update(extra)
    return payload


async def session_2x(stack: Stack, cp_id: str, subprotocol: str, disconnect_by_operator: bool) -> None:
    cp = await ScriptedChargePoint.connect(stack, cp_id, subprotocol, answers=ANSWERS)
    try:
        boot = await cp.call(
            "BootNotification",
            {"chargingStation": {"model": "E2E", "vendorName": "E2E"}, "reason": "PowerUp"},
        )
        assert boot["status"] == "Accepted", boot
        await cp.call("Heartbeat", {})
        await cp.call(
            "StatusNotification",
            {"timestamp": now(), "connectorStatus": "Available", "evseId": 1, "connectorId": 1},
        )
        token = {"idToken": f"TAG-{subprotocol}", "type": "ISO14443"}
        auth = await cp.call("Authorize", {"idToken": token})
        assert auth["idTokenInfo"]["status"] == "Accepted", auth
        tx = str(uuid.uuid4())
        await cp.call(
            "TransactionEvent",
            v2_transaction("Started", tx, 0, "Authorized", evse={"id": 1, "connectorId": 1}, idToken=token),
        )
        await cp.call(
            "MeterValues",
            {"evseId": 1, "meterValue": [{"timestamp": now(), "sampledValue": [{"value": 1500.0}]}]},
        )
        await cp.call("TransactionEvent", v2_transaction("Ended", tx, 1, "StopAuthorized"))

        status, body = await admin_command(stack, cp_id, "Reset", {"type": "Immediate"})
        assert (status, body["status"]) == (200, "completed"), body

        if disconnect_by_operator:
            status, body = await admin_request(
                stack, "DELETE", f"/api/v1/connections/{urllib.parse.quote(cp_id, safe='')}"
            )
            assert status == 202, body
            await asyncio.wait_for(cp.ws.wait_closed(), STEP_TIMEOUT_S)
    finally:
        await cp.close()


async def session_silent(stack: Stack, cp_id: str) -> None:
    """A charge point that does not answer in time: the command times out, the answer
    arrives late."""
    cp = await ScriptedChargePoint.connect(stack, cp_id, "ocpp1.6", silent=True)
    try:
        await cp.call("BootNotification", {"chargePointVendor": "E2E", "chargePointModel": "Silent"})
        status, body = await admin_command(stack, cp_id, "Reset", {"type": "Hard"}, timeout_s=1)
        assert (status, body["status"]) == (504, "timeout"), body
        late = [f for f in cp.received_calls if f[2] == "Reset"]
        assert late, "the gateway never sent the Reset"
        await cp.send_raw(json.dumps([3, late[-1][1], {"status": "Accepted"}]))
        await cp.call("Heartbeat", {})  # the late answer was read before this CALL
    finally:
        await cp.close()


async def refused_handshakes(stack: Stack) -> None:
    refusals = [
        (f"ws://{stack.ocpp}/not-ocpp/E2E-BAD-PATH", ["ocpp1.6"]),
        (f"ws://{stack.ocpp}/ocpp/E2E-BAD-SUBPROTOCOL", ["ocpp0.9"]),
    ]
    for url, subprotocols in refusals:
        with pytest.raises(websockets.InvalidStatus):
            ws = await websockets.connect(url, subprotocols=subprotocols, proxy=None, open_timeout=STEP_TIMEOUT_S)
            await ws.close()


async def scenario(stack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    await refused_handshakes(stack)
    await asyncio.gather(
        session_16(stack, f"E2E-16-{run}"),
        session_2x(stack, f"E2E-201-{run}", "ocpp2.0.1", disconnect_by_operator=True),
        session_2x(stack, f"E2E-21-{run}", "ocpp2.1", disconnect_by_operator=False),
        session_silent(stack, f"E2E-SILENT-{run}"),
    )


def scrape_values(text: str) -> dict[str, float]:
    """{'name{labels}': value} of an OpenMetrics text."""
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        values[series] = float(value)
    return values


@pytest.fixture(scope="module")
def exercised(stack) -> Stack:
    """The stack after the scripted session, once Prometheus has scraped it enough."""
    # Scraped before the session too, so that rates see the session's increases.
    wait_until(
        lambda: stack.query(f'up{{job="{JOB}"}} == 1'),
        SCRAPES_TIMEOUT_S,
        f'up{{job="{JOB}"}} == 1',
    )
    wait_until(
        lambda: stack.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 2'),
        SCRAPES_TIMEOUT_S,
        "2 scrapes of the gateway before the session",
    )

    stack.scenario_started = time.time()
    asyncio.run(asyncio.wait_for(scenario(stack), SCENARIO_TIMEOUT_S))
    stack.scenario_ended = time.time()
    print(f"scenario took {stack.scenario_ended - stack.scenario_started:.1f} s")

    # What the scenario claims to have done, as the gateway counts it.
    _, _, text = stack.scrape()
    values = scrape_values(text)
    expected_positive = [
        'ocppgw_connection_attempts_total{result="accepted"}',
        'ocppgw_connection_attempts_total{result="bad_path"}',
        'ocppgw_connection_attempts_total{result="unsupported_subprotocol"}',
        'ocppgw_disconnects_total{reason="closed_by_charge_point"}',
        'ocppgw_disconnects_total{reason="disconnected_by_operator"}',
        'ocppgw_invalid_frames_total{kind="not_json"}',
        'ocppgw_invalid_frames_total{kind="not_array"}',
        'ocppgw_late_responses_total',
        'ocppgw_timestamps_without_zone_total{ocpp_version="ocpp1.6"}',
        'ocppgw_call_errors_total{direction="inbound",error_code="NotImplemented"}',
        'ocppgw_call_errors_total{direction="outbound",error_code="NotImplemented"}',
        'ocppgw_commands_total{source="admin",action="Reset",outcome="completed"}',
        'ocppgw_commands_total{source="admin",action="ClearCache",outcome="callError"}',
        'ocppgw_commands_total{source="admin",action="Reset",outcome="timeout"}',
        'ocppgw_commands_total{source="kafka",action="Reset",outcome="completed"}',
        'ocppgw_commands_consumed_total{action="Reset"}',
        'ocppgw_kafka_produce_total{topic="ocpp.events",outcome="ok"}',
        'ocppgw_kafka_produce_total{topic="ocpp.command-results",outcome="ok"}',
    ]
    for version in SUPPORTED_VERSIONS:
        for action in ("BootNotification", "Heartbeat", "StatusNotification", "Authorize", "MeterValues"):
            expected_positive.append(
                f'ocppgw_messages_received_total{{ocpp_version="{version}",message_type="call",action="{action}"}}'
            )
    missing = [series for series in expected_positive if values.get(series, 0) <= 0]
    assert not missing, "the scenario did not produce:\n" + "\n".join(missing)

    # Prometheus has scraped the gateway several times, and after the session.
    wait_until(
        lambda: stack.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= {MIN_SCRAPES}'),
        SCRAPES_TIMEOUT_S,
        f"{MIN_SCRAPES} scrapes of the gateway",
    )
    wait_until(
        lambda: stack.query(f'timestamp(up{{job="{JOB}"}}) > {stack.scenario_ended + 1:.3f}'),
        SCRAPES_TIMEOUT_S,
        "a scrape of the gateway after the session",
    )
    return stack


# ---------------------------------------------------------------------------------------
# The dashboard's queries
# ---------------------------------------------------------------------------------------

# The dashboard's variables: "all" is "All" in both (Grafana sends `.*`); "selected" picks
# this gateway's instance and every OCPP version explicitly (regex-escaped values).
VARIABLE_SETS = ("all", "selected")

QUERIES = dashboard_queries(DASHBOARD, {})  # only to name the parametrized cases


def _query_cases():
    cases = []
    for set_name in VARIABLE_SETS:
        for index, (title, _) in enumerate(QUERIES):
            cases.append(pytest.param(set_name, index, id=f"{set_name}-{index:02d}-{title}"))
    return cases


@pytest.fixture(scope="module")
def dashboard_results(exercised) -> dict[str, list[tuple[str, str, list]]]:
    """{variable set: [(title, expr, result)]}, polled until every query has a series
    or QUERIES_TIMEOUT_S passed (some series appear only with librdkafka's statistics,
    every 5 s)."""
    variable_sets = {
        "all": {"instance": "$__all", "ocpp_version": "$__all"},
        "selected": {"instance": [exercised.metrics], "ocpp_version": SUPPORTED_VERSIONS},
    }
    queries = {
        name: dashboard_queries(DASHBOARD, variables, builtins={"__rate_interval": RATE_INTERVAL})
        for name, variables in variable_sets.items()
    }
    results: dict[str, list] = {}
    deadline = time.monotonic() + QUERIES_TIMEOUT_S
    while True:
        results = {
            name: [(title, expr, exercised.query(expr)) for title, expr in exprs]
            for name, exprs in queries.items()
        }
        if all(result for entries in results.values() for _, _, result in entries):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    return results


def test_the_dashboard_has_queries():
    assert len(QUERIES) > 40, QUERIES


@pytest.mark.parametrize("set_name, index", _query_cases())
def test_dashboard_query_returns_data(dashboard_results, set_name, index):
    title, expr, result = dashboard_results[set_name][index]
    assert result, f"panel {title!r}: no series for\n  {expr}\n(process logs in {STACK_LOGS[0]})"


# Panels that must show the session itself, not just series: their series exist from
# the start (docs/metrics.md), so Prometheus saw them before and after the session.
# "positive": some value > 0; "number": some value that is not NaN (a quantile).
ACTIVE_PANELS = {
    "Messages received /s": "positive",
    "Connection attempts by result": "positive",
    "Disconnects by reason": "positive",
    "Invalid frames by kind": "positive",
    "Timestamps without time zone": "positive",
    "Events published by type and outcome": "positive",
    "Kafka produce rate by topic and outcome": "positive",
    "Message size": "number",
    "Connection duration": "number",
}


def test_panels_show_the_session(exercised):
    """Evaluated just after the session, with a range that covers all of it."""
    at = exercised.scenario_ended + 1
    window = max(15, int(at - exercised.scenario_started) + 5)
    queries = dashboard_queries(DASHBOARD, {}, builtins={"__rate_interval": f"{window}s"})
    titles = {title for title, _ in queries}
    assert set(ACTIVE_PANELS) <= titles, set(ACTIVE_PANELS) - titles
    bad = []
    for title, expr in queries:
        check = ACTIVE_PANELS.get(title)
        if check is None:
            continue
        values = [float(sample["value"][1]) for sample in exercised.query(expr, at=at)]
        if check == "positive" and not any(v > 0 for v in values):
            bad.append(f"{title}: no value above 0 in {values} for\n  {expr}")
        if check == "number" and all(math.isnan(v) for v in values):
            bad.append(f"{title}: only NaN in {values} for\n  {expr}")
    assert not bad, "\n".join(bad)


def test_dashboard_variables_list_the_instance_and_versions(exercised):
    """The `instance` and `ocpp_version` variables (Grafana's label_values) through the
    equivalent Prometheus API calls."""
    dashboard = load_dashboard(DASHBOARD)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, label in (("instance", "instance"), ("ocpp_version", "ocpp_version")):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert m and m.group(2) == label, query
        selector = m.group(1).replace("$instance", ".*")
        values = exercised.prometheus_api(f"/api/v1/label/{label}/values", {"match[]": selector})
        if name == "instance":
            assert exercised.metrics in values, values
        else:
            assert sorted(values) == sorted(SUPPORTED_VERSIONS), values


def test_alert_annotation_query_is_valid(exercised):
    """The dashboard's alert annotation query runs (it has data only while a gateway
    alert fires, which this scenario does not cause)."""
    dashboard = load_dashboard(DASHBOARD)
    exprs = [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert exprs
    for expr in exprs:
        exercised.query(expr.replace("$instance", ".*"))


def test_rules_load_and_evaluate_without_errors(exercised):
    """Prometheus loaded every group of the rules file, and each rule has been
    evaluated against the gateway's real series without an error."""
    expected_groups = set()
    for path in RULES_DIR.glob("*.rules.yml"):
        expected_groups |= set(re.findall(r"(?m)^\s*- name:\s*(\S+)", path.read_text("utf-8")))

    def evaluated():
        groups = exercised.prometheus_api("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if not rules or any(rule.get("health") == "unknown" for rule in rules):
            return None
        return groups

    groups = wait_until(evaluated, 30, "every rule to be evaluated once")
    assert {g["name"] for g in groups} == expected_groups
    bad = [
        f"{rule['name']}: {rule.get('health')} {rule.get('lastError', '')}"
        for group in groups
        for rule in group["rules"]
        if rule.get("health") != "ok"
    ]
    assert not bad, "\n".join(bad)
    target = exercised.prometheus_api("/api/v1/targets", {"state": "active"})["activeTargets"]
    assert [t["health"] for t in target if t["labels"].get("job") == JOB] == ["up"], target


# ---------------------------------------------------------------------------------------
# promtool on a real scrape
# ---------------------------------------------------------------------------------------


def run_promtool_check_metrics(stack: Stack) -> tuple[subprocess.CompletedProcess, str, str]:
    """`curl .../metrics | promtool check metrics`, as Prometheus's docs show it. promtool
    reads the classic text format (0.0.4), so the scrape asks for that format."""
    promtool = find_tool("promtool")
    status, content_type, text = stack.scrape(accept="text/plain; version=0.0.4")
    assert status == 200
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    return checked, content_type, text


# promtool (2.x) reads the classic text format; /metrics serves it to clients that do
# not ask for OpenMetrics (Prometheus itself asks for OpenMetrics).
def test_promtool_check_metrics_accepts_a_real_scrape(exercised):
    checked, content_type, _ = run_promtool_check_metrics(exercised)
    output = (checked.stdout + checked.stderr).decode("utf-8", "replace")
    assert checked.returncode == 0, (
        f"promtool check metrics exited {checked.returncode} on a scrape served as "
        f"{content_type!r}:\n{output}"
    )


