"""The one way the Python tests start the real charge-point-gateway binary."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from support.process import Process

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "charge-point-gateway"

STARTUP_TIMEOUT_S = 30.0
LISTENERS = ("ocpp", "admin", "metrics")
# Bound only when TLS is configured.
OPTIONAL_LISTENERS = ("tls",)


def gateway_binary() -> Path:
    """`$GATEWAY_BIN`, else the debug build; fails the test when it is missing."""
    binary = Path(os.environ.get("GATEWAY_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(
            f"gateway binary not found at {binary} (build it with `cargo build`, or set GATEWAY_BIN)",
            pytrace=False,
        )
    return binary


def _field(entry: dict, name: str):
    """A field of a JSON log line, at the top level or under `fields`."""
    value = entry.get(name)
    if value is None and isinstance(entry.get("fields"), dict):
        value = entry["fields"].get(name)
    return value


class Gateway(Process):
    """The gateway with every listener on a free loopback port, JSON logs and no event
    sink unless `extra_env` configures one.

    `extra_env` adds CPGW_* settings; every other CPGW_* variable is dropped, so that a
    developer's settings do not leak in (which is why the binary's path is GATEWAY_BIN,
    not a CPGW_* name). `start()` returns once the log reports every listener bound;
    `bound` maps "ocpp", "admin" and "metrics" to their addresses.
    """

    def __init__(
        self,
        binary: Path,
        extra_env: dict | None = None,
        open_files: int | None = None,
        log: Path | None = None,
        tls: bool = False,
    ):
        self.binary = binary
        self.expected = LISTENERS + (OPTIONAL_LISTENERS if tls else ())
        self.extra_env = extra_env or {}
        argv = [
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPGW_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        super().__init__("gateway", argv, env=env, log=log, open_files=open_files)
        self.bound: dict[str, str] = {}

    @property
    def ocpp_addr(self) -> str | None:
        return self.bound.get("ocpp")

    @property
    def admin_addr(self) -> str | None:
        return self.bound.get("admin")

    @property
    def metrics_addr(self) -> str | None:
        return self.bound.get("metrics")

    @property
    def tls_addr(self) -> str | None:
        return self.bound.get("tls")

    def on_line(self, line: str) -> None:
        if len(self.bound) == len(self.expected):
            return
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if not isinstance(entry, dict):
            return
        message, address = _field(entry, "message"), _field(entry, "address")
        for name in self.expected:
            if message == f"{name} listener bound" and isinstance(address, str):
                self.bound[name] = address

    def start(self) -> None:
        super().start()
        if self.wait_for(lambda: len(self.bound) == len(self.expected), STARTUP_TIMEOUT_S):
            return
        exited = self.proc.poll()
        if exited is None and self.output_ended():
            # Output closed: the process is exiting; collect its code.
            try:
                exited = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        why = (
            f"exited with code {exited}"
            if exited is not None
            else f"did not report every listener within {STARTUP_TIMEOUT_S:.0f} s"
        )
        raise RuntimeError(
            f"gateway {why} (bound: {self.bound}).\n"
            f"command: {' '.join(self.argv)}\n"
            f"output so far:\n{self.log_text() or '<empty>'}"
        )


@contextlib.contextmanager
def running(gateway: Gateway, stop_timeout_s: float = 20.0):
    """Starts `gateway` for the block; at its end, stops it and checks that the graceful
    shutdown exited 0."""
    gateway.start()
    try:
        yield gateway
    finally:
        assert gateway.stop(stop_timeout_s) == 0, gateway.log_text(last=50)


def write_credentials(path: Path, records: list[dict]) -> Path:
    """A credentials file (JSON lines) with `records`, for `auth.credentials_file`."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path
