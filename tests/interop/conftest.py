"""Fixtures for the OCPP interop tests.

One gateway process (the real binary, started by tests/support/gateway.py) is started
per test session; every test uses its own charge point id, so tests don't see each
other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import websockets

from support.cluster import ClusterUnderTest
from support.gateway import Gateway, gateway_binary

SHUTDOWN_TIMEOUT_S = 20.0
# Upper bound for any single OCPP round trip or admin HTTP request.
STEP_TIMEOUT_S = 15.0
# How long the charge point library waits for a CALLRESULT before giving up.
CP_RESPONSE_TIMEOUT_S = 10


# --------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------


_RUNNING: Gateway | None = None


@pytest.fixture(scope="session")
def gateway():
    # INTEROP_CLUSTER=1: three nodes sharing a registry in Redis, behind HAProxy running
    # deploy/haproxy/haproxy.cfg (scripts/test.sh runs the OCPP suites both ways).
    if os.environ.get("INTEROP_CLUSTER") == "1":
        gw = ClusterUnderTest()
    else:
        gw = Gateway(gateway_binary())
    gw.start()
    global _RUNNING
    _RUNNING = gw
    try:
        yield gw
        if isinstance(gw, ClusterUnderTest):
            # The run means something only if commands crossed nodes.
            assert gw.forwarded() > 0, "no command was forwarded between the nodes"
    finally:
        _RUNNING = None
        code = gw.stop(SHUTDOWN_TIMEOUT_S)
        if code is None:
            raise AssertionError(
                f"gateway did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of "
                f"SIGTERM; killed.\nlast stderr:\n{gw.log_text(last=50)}"
            )
        assert code == 0, (
            f"gateway exited with code {code} after SIGTERM (graceful shutdown "
            f"should exit 0).\nlast stderr:\n{gw.log_text(last=50)}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, attach the gateway's log lines for its charge point."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or _RUNNING is None:
        return
    cp_id = getattr(item, "_interop_cp_id", None)
    text = _RUNNING.log_lines_matching(cp_id) if cp_id else ""
    title = f"gateway log lines mentioning {cp_id}"
    if not text:
        text = _RUNNING.log_text(last=40)
        title = "gateway log (last 40 lines)"
    report.sections.append((title, text or "<none>"))


# --------------------------------------------------------------------------
# Per-test helpers
# --------------------------------------------------------------------------


@pytest.fixture
def cp_id(request) -> str:
    """A charge point id unique to this test."""
    module = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")
    value = f"py-{module}-{uuid.uuid4().hex[:12]}"
    request.node._interop_cp_id = value
    return value


class AdminClient:
    """Tiny client for the admin HTTP API (stdlib only, run off the event loop).

    Calls run in a worker thread: a command is answered by the charge point,
    whose OCPP task lives on the event loop, so blocking the loop would
    deadlock the test.
    """

    def __init__(self, addr: str, event_addrs: list[str] | None = None):
        self.base = f"http://{addr}"
        # Recent events are kept per node: in a cluster they are read from every node.
        self.event_bases = [f"http://{a}" for a in (event_addrs or [addr])]
        # Never route loopback traffic through a proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body=None, base: str | None = None):
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            (base or self.base) + path, data=data, method=method, headers=headers
        )
        try:
            with self._opener.open(req, timeout=STEP_TIMEOUT_S) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return status, parsed, text

    async def get(self, path: str, params: dict | None = None):
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        return await asyncio.wait_for(
            asyncio.to_thread(self._request, "GET", path), STEP_TIMEOUT_S + 5
        )

    async def post(self, path: str, body):
        return await asyncio.wait_for(
            asyncio.to_thread(self._request, "POST", path, body), STEP_TIMEOUT_S + 5
        )

    async def put(self, path: str, body):
        return await asyncio.wait_for(
            asyncio.to_thread(self._request, "PUT", path, body), STEP_TIMEOUT_S + 5
        )

    async def delete(self, path: str):
        return await asyncio.wait_for(
            asyncio.to_thread(self._request, "DELETE", path), STEP_TIMEOUT_S + 5
        )

    async def command(self, cp_id: str, action: str, payload: dict, timeout_s=10):
        """Send a command through the gateway; returns the parsed JSON answer."""
        path = f"/api/v1/charge-points/{urllib.parse.quote(cp_id, safe='')}/commands"
        status, body, text = await self.post(
            path, {"action": action, "payload": payload, "timeoutSeconds": timeout_s}
        )
        assert status == 200, f"POST {path} -> HTTP {status}: {text}"
        assert isinstance(body, dict), f"POST {path}: not a JSON object: {text}"
        return body

    async def events(self, cp_id: str, limit: int = 100) -> list[dict]:
        path = f"/api/v1/events?{urllib.parse.urlencode({'chargePointId': cp_id, 'limit': limit})}"
        events = []
        for base in self.event_bases:
            status, body, text = await asyncio.wait_for(
                asyncio.to_thread(self._request, "GET", path, None, base), STEP_TIMEOUT_S + 5
            )
            assert status == 200, f"GET {base}/api/v1/events -> HTTP {status}: {text}"
            assert isinstance(body, dict) and isinstance(body.get("events"), list), (
                f"GET /api/v1/events: expected {{'events': [...]}}, got: {text}"
            )
            events.extend(body["events"])
        # Oldest first, as one node's ring answers (RFC 3339 times in UTC sort as text).
        events.sort(key=lambda event: event.get("time", ""))
        return events[-limit:]

    async def wait_for_events(self, cp_id: str, predicate, timeout_s=5.0):
        """Events for cp_id, re-read until predicate(events) holds or timeout.

        The gateway answers a transaction CALL only after its event is durable,
        so the first read normally succeeds; the bounded re-read only tolerates
        an asynchronous in-memory ring. Returns the last list read either way.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            events = await self.events(cp_id)
            if predicate(events) or time.monotonic() >= deadline:
                return events
            await asyncio.sleep(0.05)

    async def connection(self, cp_id: str):
        path = f"/api/v1/connections/{urllib.parse.quote(cp_id, safe='')}"
        return await self.get(path)


@pytest.fixture
def admin(gateway) -> AdminClient:
    return AdminClient(gateway.admin_addr, getattr(gateway, "admin_addrs", None))


class RecordingConnection:
    """Wraps the websocket so a test can see every raw frame in both directions."""

    def __init__(self, ws):
        self.ws = ws
        self.sent: list[list] = []
        self.received: list[list] = []

    async def send(self, message):
        self.sent.append(json.loads(message))
        await self.ws.send(message)

    async def recv(self):
        message = await self.ws.recv()
        with contextlib.suppress(ValueError):
            self.received.append(json.loads(message))
        return message

    def sent_call(self, message_id: str) -> list:
        for frame in self.sent:
            if frame[0] == 2 and frame[1] == message_id:
                return frame
        raise AssertionError(f"no CALL with id {message_id} was sent")

    def received_calls(self, action: str) -> list[list]:
        return [f for f in self.received if f[0] == 2 and f[2] == action]


@pytest.fixture
def open_cp(gateway):
    """`async with open_cp(CpClass, cp_id, "ocpp1.6") as cp:` -> connected CP.

    The charge point's `start()` loop runs as a task for the duration of the
    block; it is cancelled and the socket closed on exit. `cp.conn` is the
    RecordingConnection with all frames seen.
    """

    @contextlib.asynccontextmanager
    async def _open(cp_class, cp_id: str, subprotocol: str):
        url = f"ws://{gateway.ocpp_addr}/ocpp/{urllib.parse.quote(cp_id, safe='')}"
        ws = await websockets.connect(
            url,
            subprotocols=[subprotocol],
            proxy=None,
            open_timeout=STEP_TIMEOUT_S,
        )
        try:
            assert ws.subprotocol == subprotocol, (
                f"gateway negotiated subprotocol {ws.subprotocol!r}, "
                f"expected {subprotocol!r}"
            )
            conn = RecordingConnection(ws)
            cp = cp_class(cp_id, conn, response_timeout=CP_RESPONSE_TIMEOUT_S)
            cp.conn = conn
            task = asyncio.create_task(cp.start(), name=f"cp-{cp_id}")
            try:
                yield cp
                if task.done() and not task.cancelled():
                    exc = task.exception()
                    if exc is not None:
                        raise AssertionError(
                            f"charge point receive loop died: {exc!r}"
                        ) from exc
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    return _open


async def cp_call(cp, payload, message_id: str | None = None):
    """Make a CALL with a bounded wait; CALLERRORs raise instead of returning None."""
    return await asyncio.wait_for(
        cp.call(payload, suppress=False, unique_id=message_id), STEP_TIMEOUT_S
    )


@pytest.fixture(name="cp_call")
def cp_call_fixture():
    """The `cp_call` helper as a fixture (test modules don't import conftest)."""
    return cp_call
