"""Fixtures for the OCPP interop tests.

One gateway process (the real binary) is started per test session; every test
uses its own charge point id, so tests don't see each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import websockets

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "charge-point-gateway"

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 20.0
# Upper bound for any single OCPP round trip or admin HTTP request.
STEP_TIMEOUT_S = 15.0
# How long the charge point library waits for a CALLRESULT before giving up.
CP_RESPONSE_TIMEOUT_S = 10


# --------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------


def _log_message(obj: dict):
    msg = obj.get("message")
    if msg is None and isinstance(obj.get("fields"), dict):
        msg = obj["fields"].get("message")
    return msg


def _log_address(obj: dict):
    addr = obj.get("address")
    if addr is None and isinstance(obj.get("fields"), dict):
        addr = obj["fields"].get("address")
    return addr


class Gateway:
    """A running charge-point-gateway process, with its stderr collected."""

    def __init__(self, binary: Path, extra_env: dict | None = None, open_files: int | None = None):
        """`extra_env` adds CPGW_* settings; `open_files` caps the process's open files
        (RLIMIT_NOFILE, soft and hard)."""
        self.binary = binary
        self.extra_env = extra_env or {}
        self.open_files = open_files
        self.argv = [
            str(binary),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            # Not the default 0.0.0.0:9090, which may be taken (e.g. by a Prometheus).
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--events",
            "none",
        ]
        self.ocpp_addr: str | None = None
        self.admin_addr: str | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._bound = threading.Condition(self._lock)
        self._eof = False
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    # -- stderr handling ---------------------------------------------------

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with self._lock:
                self._lines.append(line)
                if self.ocpp_addr is None or self.admin_addr is None:
                    self._note_bound(line)
                    self._bound.notify_all()
        with self._lock:
            self._eof = True
            self._bound.notify_all()

    def _note_bound(self, line: str) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        msg = _log_message(obj)
        addr = _log_address(obj)
        if not isinstance(addr, str):
            return
        if msg == "ocpp listener bound":
            self.ocpp_addr = addr
        elif msg == "admin listener bound":
            self.admin_addr = addr

    def log_text(self, last: int | None = None) -> str:
        with self._lock:
            lines = list(self._lines)
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)

    def log_lines_matching(self, needle: str, last: int = 200) -> str:
        with self._lock:
            lines = [line for line in self._lines if needle in line]
        return "\n".join(lines[-last:])

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        # The gateway reads `CPGW_*` variables as configuration (which is why
        # the binary's path is GATEWAY_BIN, not a CPGW_* name). Every CPGW_* is
        # dropped so that the command line alone decides the configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPGW_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        limit = self.open_files

        def limit_open_files():
            if limit is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=limit_open_files if limit is not None else None,
        )
        self._reader = threading.Thread(
            target=self._drain, name="gateway-stderr", daemon=True
        )
        self._reader.start()

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._lock:
            while self.ocpp_addr is None or self.admin_addr is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._bound.wait(timeout=min(remaining, 0.5))
            ready = self.ocpp_addr is not None and self.admin_addr is not None
        if not ready:
            exited = self.proc.poll()
            if exited is None and self._eof:
                # stderr closed: the process is exiting; collect its code.
                try:
                    exited = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
            why = (
                f"exited with code {exited}"
                if exited is not None
                else f"did not report both listeners within {STARTUP_TIMEOUT_S:.0f} s"
            )
            raise RuntimeError(
                f"gateway {why} (ocpp={self.ocpp_addr}, admin={self.admin_addr}).\n"
                f"command: {' '.join(self.argv)}\n"
                f"stderr so far:\n{self.log_text() or '<empty>'}"
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self) -> int:
        """SIGTERM, wait for exit, return the exit code (kill if it hangs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"gateway did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of "
                    f"SIGTERM; killed.\nlast stderr:\n{self.log_text(last=50)}"
                )
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode


_RUNNING: Gateway | None = None


@pytest.fixture(scope="session")
def gateway():
    binary = Path(os.environ.get("GATEWAY_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(
            f"gateway binary not found at {binary} "
            "(build it with `cargo build`, or set GATEWAY_BIN)",
            pytrace=False,
        )
    gw = Gateway(binary)
    gw.start()
    global _RUNNING
    _RUNNING = gw
    try:
        yield gw
    finally:
        _RUNNING = None
        code = gw.stop()
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

    def __init__(self, addr: str):
        self.base = f"http://{addr}"
        # Never route loopback traffic through a proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body=None):
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
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
        status, body, text = await self.get(
            "/api/v1/events", {"chargePointId": cp_id, "limit": limit}
        )
        assert status == 200, f"GET /api/v1/events -> HTTP {status}: {text}"
        assert isinstance(body, dict) and isinstance(body.get("events"), list), (
            f"GET /api/v1/events: expected {{'events': [...]}}, got: {text}"
        )
        return body["events"]

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
    return AdminClient(gateway.admin_addr)


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
