"""Child processes for the tests (the gateway, tansu, Prometheus) and small helpers."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    """Polls `predicate` until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError) as err:  # not up yet
            last_error = err
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


class Process:
    """A child process whose output lines (stdout and stderr) are kept in memory, and
    copied to `log` when given, so a run can be read after the tests.

    A thread drains the pipe: a child blocked on a full pipe would stall. `open_files`
    caps the child's RLIMIT_NOFILE (soft and hard).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict | None = None,
        log: Path | None = None,
        open_files: int | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.open_files = open_files
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._eof = False
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        limit = self.open_files

        def limit_open_files():
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=limit_open_files if limit is not None else None,
        )
        self._reader = threading.Thread(target=self._drain, name=f"{self.name}-output", daemon=True)
        self._reader.start()

    # -- output ----------------------------------------------------------------------

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log_file = open(self.log, "wb") if self.log is not None else None
        try:
            for raw in self.proc.stdout:
                if log_file is not None:
                    log_file.write(raw)
                    log_file.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._lock:
                    self._lines.append(line)
                    self.on_line(line)
                    self._changed.notify_all()
        finally:
            if log_file is not None:
                log_file.close()
            with self._lock:
                self._eof = True
                self._changed.notify_all()

    def on_line(self, line: str) -> None:
        """Called with each new line, under the lock (for subclasses)."""

    def wait_for(self, predicate, timeout_s: float) -> bool:
        """Waits until predicate() (called under the lock) holds, the output ends or
        time runs out; returns predicate()."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._changed.wait(timeout=min(remaining, 0.5))
            return predicate()

    def output_ended(self) -> bool:
        with self._lock:
            return self._eof

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

    # -- lifecycle -------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._join_reader()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, return the exit code; SIGKILL when it hangs (then None)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._join_reader()
        return self.proc.returncode
