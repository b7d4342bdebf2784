#!/usr/bin/env python3
"""The gateway's benchmark, side by side with other OCPP servers.

Run through `bench/run.sh`, which builds and installs what this needs. Every server runs
on CPU 1 and the load generator on CPU 0 (when the machine has two or more), so every
server gets the same single core and the load generator never competes with it. The
figures that matter are the ratios between servers measured in this one run; absolute
numbers depend on the machine.

Scenarios:
- capacity: the gateway with many idle charge points (memory per connection, CPU while
  idle with WebSocket pings, time to connect them all);
- reconnect storm: all of them dropped at once, time until all have booted again;
- side by side: for the gateway (embedded events), the gateway with Kafka durable events,
  an ocpp-rpc server, a Python `ocpp` server and a bare echo server: memory per idle
  connection, the highest sustained CALL rate (closed loop), and latency and CPU per
  answered CALL at the same offered load for all of them (the load generator reads each
  server's CPU time from /proc at the edges of its measurement window).
"""

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TICKS = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Settings:
    """Sizes of the run; --quick shrinks them for a smoke test."""

    def __init__(self, quick):
        self.quick = quick
        self.capacity_connections = 500 if quick else 19_000
        self.idle_connections = 300 if quick else 5_000
        self.load_connections = 100 if quick else 1_000
        # New connections per second: what every server accepts without connect timeouts
        # (ocpp-rpc did not at 5,000/s); the capacity run reports the time it takes.
        self.ramp_rate = 1_000 if quick else 2_000
        # The storm run opens every connection at once, so its time to connect them all is
        # the server's, not the ramp's. The capacity run ramps up instead: memory is
        # measured in the steady state, not after a burst of simultaneous handshakes
        # whose buffers the allocator keeps for reuse.
        self.capacity_ramp_rate = self.ramp_rate
        self.storm_ramp_rate = 0
        self.warmup = "1s" if quick else "3s"
        self.duration = "2s" if quick else "10s"
        self.idle_window = 3 if quick else 30
        self.ping_interval = "1s" if quick else "10s"
        # Ten source addresses give ten ephemeral port ranges: room for every connection
        # and for the reconnect storm's new ones while old ones sit in TIME_WAIT.
        self.sources = "127.0.0.2-127.0.0.11"


class Pinning:
    """Which CPU the servers and the load generator run on."""

    def __init__(self):
        cpus = os.cpu_count() or 1
        self.enabled = cpus >= 2 and shutil_which("taskset")
        self.server = ["taskset", "-c", "1"] if self.enabled else []
        self.load = ["taskset", "-c", "0"] if self.enabled else []


def shutil_which(name):
    from shutil import which

    return which(name) is not None


class Process:
    """A server under test: started, waited for, measured, stopped."""

    def __init__(self, name, command, env=None):
        self.name = name
        self.command = command
        log(f"starting {name}: {shlex.join(command)}")
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.lines = []
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if len(self.lines) < 100:
                self.lines.append(line.rstrip())
            if line.startswith("listening on"):
                self.listening.set()

    def wait_listening(self, timeout=60):
        if not self.listening.wait(timeout):
            raise RuntimeError(f"{self.name} did not start: {self.lines[-5:]}")

    def wait_http(self, url, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} within {timeout} s")

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KB

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for scratch in getattr(self, "scratch_files", []):
            scratch.unlink(missing_ok=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.settings = Settings(args.quick)
        self.pinning = Pinning()
        self.bin = Path(args.bin_dir)
        self.simulator = self.bin / "charge-point-simulator"
        self.commands = []
        self.workdir = Path(tempfile.mkdtemp(prefix="cpgw-bench-"))

    # --- servers -------------------------------------------------------------------

    def gateway(self, kafka_brokers=None, extra_env=None, name=None, tls_port=None, simulator_flags=(), events="file"):
        port, admin, metrics = free_port(), free_port(), free_port()
        # The log level stays at its default (info): what a user runs.
        env = {
            "CPGW_SESSION__PING_INTERVAL": self.settings.ping_interval,
            **(extra_env or {}),
        }
        command = self.pinning.server + [
            str(self.bin / "charge-point-gateway"),
            "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--metrics-listen", f"127.0.0.1:{metrics}",
        ]
        if kafka_brokers:
            env["CPGW_KAFKA__BROKERS"] = kafka_brokers
            env["CPGW_KAFKA__TOPIC_REPLICATION"] = "1"
            name = "gateway (Kafka)"
        elif events == "none":
            command += ["--events", "none"]
            name = name or "gateway (no events)"
        else:
            events_file = self.workdir / "events.jsonl"
            command += ["--events", "file", "--events-file", str(events_file)]
            name = name or "gateway"
        server = Process(name, command, env=env)
        # A fast run writes hundreds of megabytes of events; nobody reads them afterwards.
        server.scratch_files = [events_file] if not kafka_brokers and events != "none" else []
        server.wait_http(f"http://127.0.0.1:{admin}/readyz")
        server.url = (
            f"wss://localhost:{tls_port}/ocpp" if tls_port else f"ws://127.0.0.1:{port}/ocpp"
        )
        server.simulator_flags = list(simulator_flags)
        server.env_note = " ".join(f"{k}={v}" for k, v in env.items())
        return server

    def peer(self, name, command, port, simulator_flags=()):
        """Starts a peer server that prints `listening on ...` once it accepts connections."""
        server = Process(name, self.pinning.server + command)
        server.wait_listening()
        server.url = f"ws://127.0.0.1:{port}/ocpp"
        server.simulator_flags = list(simulator_flags)
        return server

    def echo(self):
        port = free_port()
        return self.peer(
            "echo",
            [str(self.bin / "bench-echo-server"), "--listen", f"127.0.0.1:{port}"],
            port,
            # The echo server sends every CALL back: count that as its answer.
            simulator_flags=["--echo-baseline"],
        )

    def ocpp_rpc(self):
        port = free_port()
        # Node resolves the script's packages next to it, so it runs from the root too.
        script = ROOT / "bench/peers/ocpp-rpc/server.js"
        return self.peer(
            "ocpp-rpc", ["node", str(script), "--host", "127.0.0.1", "--port", str(port)], port
        )

    def python_ocpp(self):
        port = free_port()
        script = ROOT / "bench/peers/python/server.py"
        python = os.path.abspath(self.args.python)
        return self.peer(
            "python ocpp", [python, str(script), "--host", "127.0.0.1", "--port", str(port)], port
        )

    def tansu(self):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        command = [
            self.args.tansu, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        log(f"starting tansu: {shlex.join(command)}")
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("tansu did not start")

    # --- the load generator -------------------------------------------------------

    def simulate(self, server, label, options, on_measuring=None):
        """Runs the simulator against `server`; returns its JSON summary.

        `on_measuring` runs (in this thread) once the measurement window has opened,
        while the load goes on: that is when memory and CPU are sampled.
        """
        command = self.pinning.load + [
            str(self.simulator), "load",
            "--url", server.url,
            "--source-addresses", self.settings.sources,
            "--format", "json",
            # The server's CPU time over exactly the measurement window, per answered CALL.
            "--server-pid", str(server.proc.pid),
            *getattr(server, "simulator_flags", []),
            *options,
        ]
        self.commands.append((label, server, command))
        log(f"{label}: {shlex.join(command)}")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        measured = None
        tail = []
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-5:]
            if self.args.verbose:
                print("  " + line.rstrip(), file=sys.stderr)
            if measured is None and "measuring]" in line and on_measuring:
                measured = on_measuring()
        out = proc.stdout.read()
        if proc.wait() != 0:
            raise RuntimeError(f"{label}: simulator failed: {tail}")
        summary = json.loads(out)
        summary["measured"] = measured
        summary["server_cpu_us_per_call"] = summary["cpu"]["server_us_per_call"]
        cpu = summary["cpu"]
        log(
            f"{label}: {summary['window']['answered_per_s']:.0f} answered/s, "
            f"p99 {summary['latency_ms']['p99']:.2f} ms, error ratio {summary['window']['error_ratio']:.5f}, "
            f"server {us(cpu['server_us_per_call'])}/CALL at {share(cpu['server_share'])}, "
            f"simulator {share(cpu['simulator_share'])}"
        )
        return summary

    # --- scenarios ----------------------------------------------------------------

    def idle_memory(self, server, connections, label, sample_cpu_for=0, ramp_rate=None):
        """Memory per idle connection: RSS growth over `connections` idle charge points."""
        time.sleep(1)
        baseline = server.rss_kb()

        def sample():
            time.sleep(2)  # let the last boots' allocations settle
            rss = [server.rss_kb()]
            cpu = None
            if sample_cpu_for:
                cpu_start, wall_start = server.cpu_seconds(), time.monotonic()
                time.sleep(sample_cpu_for)
                cpu = (server.cpu_seconds() - cpu_start) / (time.monotonic() - wall_start)
            rss.append(server.rss_kb())
            return {"rss_kb": max(rss), "cpu_share": cpu}

        duration = f"{int(2 + sample_cpu_for + 3)}s"
        summary = self.simulate(
            server,
            label,
            [
                "-n", str(connections),
                "--versions", "1.6=50,2.0.1=50",
                "--scenario", "idle",
                "--ramp-rate", str(self.settings.ramp_rate if ramp_rate is None else ramp_rate),
                "--duration", duration,
                "--progress", "1s",
            ],
            on_measuring=sample,
        )
        measured = summary["measured"] or {"rss_kb": server.rss_kb(), "cpu_share": None}
        per_connection = (measured["rss_kb"] - baseline) * 1024 / connections
        return {
            "connections": connections,
            "baseline_kb": baseline,
            "rss_kb": measured["rss_kb"],
            "bytes_per_connection": per_connection,
            "cpu_share": measured["cpu_share"],
            "all_booted_after_s": summary["all_booted_after_s"],
            "errors": summary["errors"],
            "summary": summary,
        }

    def telemetry_load(self, rate):
        """The side-by-side load: half 1.6, half 2.0.1 charge points in the telemetry
        scenario, each at `rate` CALLs per second (`max`: a closed loop)."""
        return [
            "-n", str(self.settings.load_connections),
            "--versions", "1.6=50,2.0.1=50",
            "--scenario", "telemetry",
            "--rate", rate,
            "--ramp-rate", str(self.settings.ramp_rate),
            "--warmup", self.settings.warmup,
            "--duration", self.settings.duration,
        ]

    def latency_at(self, server, label, total_rate):
        per_charge_point = total_rate / self.settings.load_connections
        return self.simulate(server, label, self.telemetry_load(f"{per_charge_point:.4f}"))

    def storm(self, server, connections, label="reconnect storm", duration=None):
        return self.simulate(
            server,
            label,
            [
                "-n", str(connections),
                "--versions", "1.6=50,2.0.1=30,2.1=20",
                "--scenario", "idle",
                "--ramp-rate", str(self.settings.storm_ramp_rate),
                "--duration", duration or ("15s" if not self.settings.quick else "6s"),
                "--storm-after", "2s",
                "--reconnect-min", "0s",
                "--reconnect-jitter", "1s",
            ],
        )

    def fsync_cost(self):
        """The embedded sink with `events.fsync` off and per batch, side by side: the highest
        rate, then the same offered load for both (half of the first one's highest rate)."""
        variants = [("off", "gateway, fsync off"), ("per_batch", "gateway, fsync per batch")]
        load = [
            "-n", str(self.settings.load_connections),
            "--versions", "1.6=50,2.0.1=50",
            "--scenario", "telemetry",
            "--ramp-rate", str(self.settings.ramp_rate),
            "--warmup", self.settings.warmup,
            "--duration", self.settings.duration,
        ]
        results = []
        offered = None
        for fsync, name in variants:
            start = lambda: self.gateway(extra_env={"CPGW_EVENTS__FSYNC": fsync}, name=name)
            result = {"name": name, "fsync": fsync}
            server = start()
            try:
                result["max"] = self.simulate(server, f"{name}: highest rate", load + ["--rate", "max"])
            finally:
                server.stop()
            if offered is None:
                offered = result["max"]["window"]["answered_per_s"] / 2
            server = start()
            try:
                per_charge_point = offered / self.settings.load_connections
                result["fixed"] = self.simulate(
                    server, f"{name}: {offered:.0f} CALL/s", load + ["--rate", f"{per_charge_point:.4f}"]
                )
            finally:
                server.stop()
            results.append(result)
        return {"offered_per_s": offered, "variants": results}

    def security(self):
        """The security profiles side by side, in one run: memory per idle connection and
        the reconnect storm for profile 0 (ws://), 1 (ws:// with Basic credentials), 2
        (wss:// with Basic credentials), and 2 with TLS session resumption off at both
        ends; and the highest rate of profile 2 against profile 0."""
        sys.path.insert(0, str(ROOT / "tests"))
        from support.pki import Pki, certificates_setting

        pki = Pki(self.workdir / "pki")
        rsa, ecdsa = pki.server("rsa"), pki.server("ecdsa")
        password = "bench-password-0001"
        # Cheaper argon2id than the default (1 MiB, 1 pass instead of 19 MiB, 2 passes):
        # every charge point's first connection verifies once, which at the default cost
        # would take minutes for the capacity run; the storms measure the remembered path.
        phc = subprocess.run(
            [str(self.bin / "charge-point-gateway"), "hash-password", "--memory-kib", "1024", "--passes", "1"],
            input=password + "\n", capture_output=True, text=True, check=True,
        ).stdout.strip()
        count = max(self.settings.capacity_connections, self.settings.idle_connections) + 1
        files = {}
        for profile in (1, 2):
            path = self.workdir / f"credentials-{profile}.jsonl"
            with open(path, "w") as out:
                for number in range(count):
                    out.write(json.dumps({"id": f"BENCH{number:06}", "profile": profile, "password_hash": phc}) + "\n")
            files[profile] = path
        variants = {
            "profile 0 (ws://)": {},
            "profile 1 (ws://, Basic)": {"profile": 1},
            "profile 2 (wss://, Basic)": {"profile": 2, "tls": True},
            "profile 2, no resumption": {"profile": 2, "tls": True, "no_resumption": True},
        }

        def start(name):
            variant = variants[name]
            env = {}
            flags = ["--id-prefix", "BENCH"]
            tls_port = None
            if "profile" in variant:
                env["CPGW_AUTH__CREDENTIALS_FILE"] = str(files[variant["profile"]])
                flags += ["--password", password]
            if variant.get("tls"):
                tls_port = free_port()
                env["CPGW_TLS__ADDRESS"] = f"127.0.0.1:{tls_port}"
                env["CPGW_TLS__CERTIFICATES"] = certificates_setting(rsa, ecdsa)
                flags += ["--ca-file", str(pki.ca_file)]
            if variant.get("no_resumption"):
                env["CPGW_TLS__SESSION_CACHE_SIZE"] = "0"
                env["CPGW_TLS__SESSION_TICKETS"] = "false"
                flags += ["--no-tls-resumption"]
            return self.gateway(extra_env=env, name=name, tls_port=tls_port, simulator_flags=flags)

        results = []
        for name, variant in variants.items():
            result = {"name": name}
            if not variant.get("no_resumption"):
                server = start(name)
                try:
                    result["memory"] = self.idle_memory(
                        server, self.settings.idle_connections, f"{name}: idle memory"
                    )
                finally:
                    server.stop()
            server = start(name)
            try:
                result["storm"] = self.storm(
                    server,
                    self.settings.capacity_connections,
                    label=f"{name}: reconnect storm",
                    duration="40s" if not self.settings.quick else "6s",
                )
            finally:
                server.stop()
            if name in ("profile 0 (ws://)", "profile 2 (wss://, Basic)"):
                server = start(name)
                try:
                    result["max"] = self.simulate(
                        server,
                        f"{name}: highest rate",
                        self.telemetry_load("max"),
                    )
                finally:
                    server.stop()
            results.append(result)
        # ocpp-rpc behind Node's own TLS server, with the same ECDSA certificate.
        port = free_port()
        script = ROOT / "bench/peers/ocpp-rpc/server.js"
        server = self.peer(
            "ocpp-rpc (wss://)",
            ["node", str(script), "--host", "127.0.0.1", "--port", str(port),
             "--tls-cert", str(ecdsa[0]), "--tls-key", str(ecdsa[1])],
            port,
            simulator_flags=["--ca-file", str(pki.ca_file)],
        )
        server.url = f"wss://localhost:{port}/ocpp"
        try:
            results.append({
                "name": "ocpp-rpc (wss://)",
                "max": self.simulate(
                    server,
                    "ocpp-rpc (wss://): highest rate",
                    self.telemetry_load("max"),
                ),
            })
        finally:
            server.stop()
        return results

    def side_by_side(self, name, start):
        """Memory per idle connection and the highest rate (with CPU per CALL), for one
        server; the latency runs at shared rates come later (`latencies`)."""
        result = {"name": name, "start": start}
        server = start()
        try:
            result["memory"] = self.idle_memory(
                server, self.settings.idle_connections, f"{name}: idle memory"
            )
        finally:
            server.stop()
        server = start()
        try:
            result["max"] = self.simulate(server, f"{name}: highest rate", self.telemetry_load("max"))
            result["command"] = server.command
        finally:
            server.stop()
        return result

    def latencies(self, result, rates):
        """Latency and CPU per CALL at each of `rates` (name → CALL/s) for one server,
        on one fresh instance."""
        server = result["start"]()
        try:
            result["latency"] = {
                key: self.latency_at(server, f"{result['name']}: {rate:.0f} CALL/s", rate)
                for key, rate in rates.items()
            }
        finally:
            server.stop()

    def run(self):
        started = time.monotonic()
        results = {"settings": vars(self.settings), "pinned": bool(self.pinning.enabled)}

        # Capacity and storm: the gateway alone, at the machine's connection limit.
        gateway = self.gateway()
        try:
            results["capacity"] = self.idle_memory(
                gateway,
                self.settings.capacity_connections,
                "capacity",
                sample_cpu_for=self.settings.idle_window,
                ramp_rate=self.settings.capacity_ramp_rate,
            )
        finally:
            gateway.stop()
        gateway = self.gateway()
        try:
            results["storm"] = self.storm(gateway, self.settings.capacity_connections)
        finally:
            gateway.stop()

        peers = [
            ("gateway", self.gateway),
            ("echo", self.echo),
            ("ocpp-rpc", self.ocpp_rpc),
            ("python ocpp", self.python_ocpp),
        ]
        results["servers"] = [self.side_by_side(name, start) for name, start in peers]
        results["security"] = self.security()
        results["fsync"] = self.fsync_cost()

        broker, brokers = self.tansu()
        try:
            results["kafka"] = self.side_by_side("gateway (Kafka)", lambda: self.gateway(brokers))
            # Latency and CPU per CALL at the same offered load for every server: half of
            # the lowest highest rate among all but the Python peer, and half of the Python
            # peer's (which the others are measured at too).
            fast = [s for s in results["servers"] if s["name"] != "python ocpp"] + [results["kafka"]]
            python = next(s for s in results["servers"] if s["name"] == "python ocpp")
            shared = min(s["max"]["window"]["answered_per_s"] for s in fast) / 2
            slow = python["max"]["window"]["answered_per_s"] / 2
            results["rates"] = {"shared": shared, "slow": slow}
            self.latencies(results["kafka"], results["rates"])
        finally:
            os.killpg(broker.pid, signal.SIGTERM)
            broker.wait()
        # The broker is gone before the others run: it is not pinned, and must not take
        # CPU from them.
        for server in fast[:-1]:
            self.latencies(server, results["rates"])
        self.latencies(python, {"slow": slow})
        for server in results["servers"] + [results["kafka"]]:
            del server["start"]

        results["elapsed_s"] = time.monotonic() - started
        return results


# --- the report -----------------------------------------------------------------------


def machine():
    def read(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        ("CPU", f"{os.cpu_count()} × {model}"),
        ("memory", f"{memory_gib:.0f} GiB"),
        ("kernel", platform.release()),
        ("open files per process", read(["sh", "-c", "ulimit -n"])),
        ("rustc", read(["rustc", "--version"])),
        ("node", read(["node", "--version"])),
        ("python", platform.python_version()),
    ]


def ratio(ours, theirs):
    if not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}×"


def us(value):
    return "n/a" if value is None else f"{value:.1f} µs"


def kib(value):
    return f"{value / 1024:.1f} KiB"


def share(value):
    return "n/a" if value is None else f"{value * 100:.0f}%"


def saturated(summary):
    """Whether the load generator, not the server, limited this run."""
    return (summary["cpu"]["simulator_share"] or 0) >= 0.9


def cpu_of(summary):
    return summary["cpu"]["server_us_per_call"]


# The goals of CPU per CALL and latency, as ratios at the same offered load.
CPU_GOAL_VS_ECHO = 1.25
CHEAPER_THAN_OCPP_RPC = 3.5
CHEAPER_THAN_PYTHON = 25
LATENCY_GOAL_VS_ECHO = 1.2
KAFKA_CPU_GOAL = 1.5


def goals_of(results):
    """Each goal on CPU per CALL and latency: what it is, what was measured, whether met."""
    by_name = {server["name"]: server for server in results["servers"]}
    ours, echo = by_name["gateway"], by_name["echo"]
    kafka = results["kafka"]
    rates = results["rates"]

    def cpu_ratio(a, b, key):
        x, y = cpu_of(a["latency"][key]), cpu_of(b["latency"][key])
        return x / y if x and y else None

    goals = []
    r = cpu_ratio(ours, echo, "shared")
    goals.append({
        "goal": f"CPU per CALL ≤ {CPU_GOAL_VS_ECHO}× the echo server's (at {rates['shared']:.0f} CALL/s)",
        "measured": "n/a" if r is None else f"{r:.2f}× ({us(cpu_of(ours['latency']['shared']))} against {us(cpu_of(echo['latency']['shared']))})",
        "met": r is not None and r <= CPU_GOAL_VS_ECHO,
        "key": "cpu_vs_echo", "ratio": r,
    })
    for peer, key, goal in (("ocpp-rpc", "shared", CHEAPER_THAN_OCPP_RPC), ("python ocpp", "slow", CHEAPER_THAN_PYTHON)):
        r = cpu_ratio(by_name[peer], ours, key)
        goals.append({
            "goal": f"CPU per CALL ≥ {goal}× lower than {peer}'s (at {rates[key]:.0f} CALL/s)",
            "measured": "n/a" if r is None else f"{r:.1f}× lower",
            "met": r is not None and r >= goal,
            "key": f"cheaper_than_{peer}", "ratio": r,
        })
    for key in ("shared", "slow"):
        a, b = ours["latency"][key]["latency_ms"], echo["latency"][key]["latency_ms"]
        p99, p999 = a["p99"] / b["p99"], a["p99.9"] / b["p99.9"]
        goals.append({
            "goal": f"p99 and p99.9 ≤ {LATENCY_GOAL_VS_ECHO}× the echo server's at {rates[key]:.0f} CALL/s",
            "measured": f"p99 {p99:.2f}× ({a['p99']:.2f} against {b['p99']:.2f} ms), p99.9 {p999:.2f}× ({a['p99.9']:.2f} against {b['p99.9']:.2f} ms)",
            "met": p99 <= LATENCY_GOAL_VS_ECHO and p999 <= LATENCY_GOAL_VS_ECHO,
            "key": f"latency_{key}", "ratio": max(p99, p999),
        })
    r = cpu_ratio(kafka, ours, "shared")
    goals.append({
        "goal": f"Kafka mode: CPU per CALL ≤ {KAFKA_CPU_GOAL}× embedded mode's, the gateway process only (at {rates['shared']:.0f} CALL/s)",
        "measured": "n/a" if r is None else f"{r:.2f}×; p99 {kafka['latency']['shared']['latency_ms']['p99']:.2f} ms with linger.ms = 5",
        "met": r is not None and r <= KAFKA_CPU_GOAL,
        "key": "kafka_cpu", "ratio": r,
    })
    return goals


def generic(command, bench):
    """A command with this run's ports and scratch folder replaced by placeholders."""
    import re

    command = command.replace(str(bench.workdir), "$SCRATCH").replace(str(ROOT) + "/", "")
    command = re.sub(r"--port \d+", "--port PORT", command)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", command)


def report(results, bench, quick):
    by_name = {server["name"]: server for server in results["servers"]}
    ours = by_name["gateway"]
    kafka = results["kafka"]
    capacity = results["capacity"]
    storm = results["storm"]
    lines = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add("Produced by `bench/run.sh`" + (" --quick (a smoke run: small sizes, not the figures of record)" if quick else "") + f" on {time.strftime('%Y-%m-%d')}; it took {results['elapsed_s'] / 60:.1f} minutes.")
    add("Every number below comes from that one run. Servers ran on CPU 1 and the load generator")
    add("(`charge-point-simulator`) on CPU 0" + ("" if results["pinned"] else " (not pinned: fewer than two CPUs)") + ", so each server had one core.")
    add("Compare ratios, not absolute numbers: this machine is shared and noisy.")
    add("")
    add("## Machine")
    add("")
    add("| | |")
    add("|---|---|")
    for key, value in machine():
        add(f"| {key} | {value} |")
    add("")

    add("## Goals")
    add("")
    add("CPU per CALL is the server process's CPU time over the measurement window divided by the CALLs it")
    add("answered (read from `/proc` by the load generator at the window's edges). Goals are judged at the")
    add("same offered load for every server, where none of them is saturated; see the tables below.")
    add("")
    add("| goal | measured | met |")
    add("|---|---|---|")
    mem = capacity["bytes_per_connection"]
    add(f"| memory per idle connection ≤ 8 KiB | {kib(mem)} at {capacity['connections']} connections | {'yes' if mem <= 8192 else 'no'} |")
    for goal in goals_of(results):
        add(f"| {goal['goal']} | {goal['measured']} | {'yes' if goal['met'] else 'no'} |")
    add("")
    add("## Capacity: the gateway with idle charge points")
    add("")
    add(f"Memory and idle CPU with charge points connected at {bench.settings.capacity_ramp_rate}/s; the time to connect")
    add("comes from the storm run below, whose charge points all start at once.")
    add("")
    add("| connections | memory per connection (RSS growth / connections) | CPU while idle, pings every " + bench.settings.ping_interval + " | time to connect and boot all, started at once | errors |")
    add("|---|---|---|---|---|")
    cpu = capacity["cpu_share"]
    add(
        f"| {capacity['connections']} | {kib(mem)} | {cpu * 100:.1f}% of one core | "
        f"{storm['all_booted_after_s'] or float('nan'):.2f} s | {sum(capacity['errors'].values()) + sum(storm['errors'].values())} |"
        if cpu is not None
        else f"| {capacity['connections']} | {kib(mem)} | n/a | n/a | n/a |"
    )
    add("")
    add("## Reconnect storm")
    add("")
    s = storm["storm"] or {}
    recovered = s.get("recovered_after_s")
    add("| connections dropped at once | time until every charge point booted again | errors seen |")
    add("|---|---|---|")
    errors = ", ".join(f"{k}: {v}" for k, v in (s.get("errors") or {}).items()) or "none"
    add(f"| {s.get('dropped', 0)} | {'%.2f s' % recovered if recovered is not None else 'not within the window'} (reconnect delay random in 0–1 s) | {errors} |")
    add("")

    add("## Security profiles")
    add("")
    add("The gateway with each OCPP security profile, in this run: profile 0 (no authentication, `ws://`),")
    add("1 (Basic credentials, `ws://`), 2 (Basic credentials over `wss://`, an RSA and an ECDSA certificate")
    add("served; the simulator's rustls negotiates TLS 1.3), and 2 with TLS session resumption off at both")
    add("ends (`tls.session_tickets = false`, `tls.session_cache_size = 0`, `--no-tls-resumption`). Passwords are argon2id with 1 MiB and 1 pass")
    add("(the default is 19 MiB, 2 passes) so that the first connection of every charge point does not take")
    add("minutes; in the storm, reconnecting charge points are let in by the verification cache. The storm")
    add(f"drops {bench.settings.capacity_connections} connections at once; each charge point reconnects after a random 0–1 s.")
    add("")
    add("| profile | memory per idle connection | storm: every charge point booted again after | storm errors | highest rate (CALL/s) | server CPU per CALL |")
    add("|---|---|---|---|---|---|")
    for variant in results["security"]:
        memory = kib(variant["memory"]["bytes_per_connection"]) if "memory" in variant else ""
        rate = f"{variant['max']['window']['answered_per_s']:.0f}" if "max" in variant else ""
        cpu = us(variant["max"]["server_cpu_us_per_call"]) if "max" in variant else ""
        if "storm" in variant:
            s = variant["storm"]["storm"] or {}
            recovered = s.get("recovered_after_s")
            storm_text = "%.2f s" % recovered if recovered is not None else "not within the window"
            errors = ", ".join(f"{k}: {v}" for k, v in (s.get("errors") or {}).items()) or "none"
        else:
            storm_text, errors = "", ""
        add(f"| {variant['name']} | {memory} | {storm_text} | {errors} | {rate} | {cpu} |")
    add("")
    base = {v["name"]: v for v in results["security"]}
    p0, p1, p2, p2n, rpc = (base[n] for n in ("profile 0 (ws://)", "profile 1 (ws://, Basic)", "profile 2 (wss://, Basic)", "profile 2, no resumption", "ocpp-rpc (wss://)"))
    def recovered(v):
        return (v["storm"]["storm"] or {}).get("recovered_after_s")
    def ratio_of(a, b):
        return ratio(a, b) if a is not None and b is not None else "n/a"
    add(
        f"Against profile 0 in the same run: storm recovery, profile 1 {ratio_of(recovered(p1), recovered(p0))}, "
        f"profile 2 {ratio_of(recovered(p2), recovered(p0))}, profile 2 without resumption {ratio_of(recovered(p2n), recovered(p0))}; "
        f"memory per idle connection, profile 1 {ratio(p1['memory']['bytes_per_connection'], p0['memory']['bytes_per_connection'])}, "
        f"profile 2 {ratio(p2['memory']['bytes_per_connection'], p0['memory']['bytes_per_connection'])}; "
        f"highest rate over wss:// {ratio(p2['max']['window']['answered_per_s'], p0['max']['window']['answered_per_s'])}. "
        f"Over wss://, the gateway (profile 2) against ocpp-rpc behind Node's TLS server (no authentication): "
        f"throughput {ratio(p2['max']['window']['answered_per_s'], rpc['max']['window']['answered_per_s'])}, "
        f"server CPU per CALL {ratio(p2['max']['server_cpu_us_per_call'] or 0, rpc['max']['server_cpu_us_per_call'] or 1)}."
    )
    add("The load generator does its side of every TLS handshake on its one core too, so the storm's")
    add("recovery time over TLS is bounded by it as much as by the gateway.")
    add("")
    add("## Throughput, CPU and latency, side by side")
    add("")
    add(f"{bench.settings.load_connections} charge points (half 1.6, half 2.0.1) send Heartbeat, StatusNotification and MeterValues in turn.")
    add("*Highest rate*: each sends its next CALL as soon as the previous one is answered (closed loop); the rate counts answered CALLs.")
    add("*Server CPU* and *simulator CPU* are shares of one core over the window; a simulator at 90% or more of its core (marked")
    add("**saturated**) was the bottleneck of that run, not the server, so its rate understates the server; compare CPU per CALL instead.")
    add(f"*Memory*: RSS growth per idle connection with {bench.settings.idle_connections} connections.")
    add("")
    add("| server | highest rate (CALL/s) | server CPU | simulator CPU | server CPU per CALL | memory per connection |")
    add("|---|---|---|---|---|---|")
    for server in results["servers"] + [kafka]:
        m = server["max"]
        add(
            f"| {server['name']} | {m['window']['answered_per_s']:.0f} | {share(m['cpu']['server_share'])} | "
            f"{share(m['cpu']['simulator_share'])}{' **saturated**' if saturated(m) else ''} | "
            f"{us(m['cpu']['server_us_per_call'])} | {kib(server['memory']['bytes_per_connection'])} |"
        )
    add("")
    rates = results["rates"]
    add(f"At the same offered load: **{rates['shared']:.0f} CALL/s** (half of the lowest highest rate among all but the Python")
    add(f"peer) and **{rates['slow']:.0f} CALL/s** (half of the Python peer's), sent on a fixed schedule; latency is CALL→CALLRESULT")
    add("measured from the scheduled time, so a server that falls behind shows it.")
    add("")
    add("| server | offered (CALL/s) | answered (CALL/s) | p50 | p99 | p99.9 | server CPU per CALL | simulator CPU per CALL |")
    add("|---|---|---|---|---|---|---|---|")
    for key in ("shared", "slow"):
        for server in results["servers"] + [kafka]:
            run = server["latency"].get(key)
            if run is None:
                continue
            l = run["latency_ms"]
            add(
                f"| {server['name']} | {rates[key]:.0f} | {run['window']['answered_per_s']:.0f} | {l['p50']:.2f} ms | {l['p99']:.2f} ms | "
                f"{l['p99.9']:.2f} ms | {us(run['cpu']['server_us_per_call'])} | {us(run['cpu']['simulator_us_per_call'])} |"
            )
    add("")
    add(f"Ratios, the gateway (embedded events) against each, at {rates['shared']:.0f} CALL/s ({rates['slow']:.0f} for the Python peer); lower is better:")
    add("")
    add("| against | server CPU per CALL | p99 | p99.9 | memory per connection |")
    add("|---|---|---|---|---|")
    for server in results["servers"][1:] + [kafka]:
        key = "shared" if "shared" in server["latency"] else "slow"
        a, b = ours["latency"][key], server["latency"][key]
        add(
            f"| {server['name']} | {ratio(cpu_of(a) or 0, cpu_of(b))} | {ratio(a['latency_ms']['p99'], b['latency_ms']['p99'])} | "
            f"{ratio(a['latency_ms']['p99.9'], b['latency_ms']['p99.9'])} | "
            f"{ratio(ours['memory']['bytes_per_connection'], server['memory']['bytes_per_connection'])} |"
        )
    add("")
    add("The gateway validates every message against the OCA schemas, writes every event (to a JSON-lines file in")
    add("embedded mode, to Kafka with `acks=all` before answering durable actions in Kafka mode) and logs at `info`, its")
    add("default; ocpp-rpc (strict mode) and Python `ocpp` validate too but write nothing; the echo server only reads")
    add("and writes frames. Kafka mode waits for the broker (tansu, in memory, on the same machine and not pinned; its")
    add("CPU is not counted) with the gateway's `linger.ms` of 5 ms.")
    add("")
    add("## Where the gateway's CPU goes")
    add("")
    add("Flame graphs of the gateway in a closed loop (1,000 charge points, telemetry, JSON-lines events, log level")
    add("`info`), taken through its own profiling endpoint with `bench/flamegraph.py`: before and after the cuts listed")
    add("in [bench/flamegraphs/README.md](bench/flamegraphs/README.md), each with its side-by-side figure. They are")
    add("not regenerated by this run; open the SVGs in a browser to search and zoom.")
    add("")
    add("| before | after |")
    add("|---|---|")
    add("| [![before](bench/flamegraphs/before.svg)](bench/flamegraphs/before.svg) | [![after](bench/flamegraphs/after.svg)](bench/flamegraphs/after.svg) |")
    add("")
    add("## The cost of `events.fsync = \"per_batch\"`")
    add("")
    fsync = results["fsync"]
    add("The gateway with JSON-lines events, without and with an `fdatasync` per batch, in the same run. *Server CPU")
    add("per CALL* is the gateway process's CPU seconds per second during the measurement window divided by the CALLs answered per second;")
    add(f"*same load* offers {fsync['offered_per_s']:.0f} CALL/s to both (half of the first one's highest rate).")
    add("")
    add("| events.fsync | highest rate (CALL/s) | server CPU per CALL | p99 at the same load | p99.9 at the same load | server CPU per CALL at the same load |")
    add("|---|---|---|---|---|---|")
    for variant in fsync["variants"]:
        m, f = variant["max"], variant["fixed"]
        add(
            f"| `{variant['fsync']}` | {m['window']['answered_per_s']:.0f} | {us(m['server_cpu_us_per_call'])} | "
            f"{f['latency_ms']['p99']:.2f} ms | {f['latency_ms']['p99.9']:.2f} ms | {us(f['server_cpu_us_per_call'])} |"
        )
    off, per_batch = fsync["variants"]
    add("")
    add(
        f"Per batch against off: throughput {ratio(per_batch['max']['window']['answered_per_s'], off['max']['window']['answered_per_s'])}, "
        f"CPU per CALL {ratio(per_batch['max']['server_cpu_us_per_call'] or 0, off['max']['server_cpu_us_per_call'] or 1)} at the highest rate, "
        f"p99 at the same load {ratio(per_batch['fixed']['latency_ms']['p99'], off['fixed']['latency_ms']['p99'])}. "
        "A sync waits for the disk, not the CPU: with a busy gateway one sync covers a whole batch, so its cost"
    )
    add("shows as latency and, once the disk is the bottleneck, as throughput. The figures depend on this machine's disk.")
    add("")
    add("## Commands")
    add("")
    add("`bench/run.sh` reproduces everything (`--quick` for a smoke run). With the ports it picked")
    add("shown as `PORT`, it ran these servers (each started afresh for each measurement):")
    add("")
    add("```sh")
    seen = []
    for _, server, _ in bench.commands:
        env = getattr(server, "env_note", "")
        line = generic(f"{env + ' ' if env else ''}{shlex.join(server.command)}", bench)
        if line not in seen:
            seen.append(line)
            add(line)
    add("```")
    add("")
    add("and these loads, in this order:")
    add("")
    add("```sh")
    for label, _, command in bench.commands:
        add(f"# {label}")
        add(generic(shlex.join(command), bench))
    add("```")
    add("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the whole benchmark")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--python", default=sys.executable, help="Python with the peer server's packages")
    parser.add_argument("--tansu", default="tansu")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--verbose", action="store_true", help="show the load generator's progress")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless every run was free of errors and the storm recovered (the test suite's smoke run)",
    )
    parser.add_argument(
        "--max-cpu-ratio",
        type=float,
        help="with --check, also exit 1 when the gateway's CPU per CALL exceeds this multiple of the echo server's "
        "at the same offered load (the regression guard)",
    )
    args = parser.parse_args()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        import shutil

        shutil.rmtree(bench.workdir, ignore_errors=True)
    text = report(results, bench, args.quick)
    Path(args.output).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(text)
    if args.check:
        problems = check(results, args.max_cpu_ratio)
        for problem in problems:
            log(f"check failed: {problem}")
        if problems:
            sys.exit(1)


def check(results, max_cpu_ratio=None):
    """What is wrong with a run: any error in any load, a storm that did not recover, or
    (with `max_cpu_ratio`) the gateway's CPU per CALL past that multiple of the echo
    server's at the same offered load."""
    problems = []
    if max_cpu_ratio is not None:
        goal = next(g for g in goals_of(results) if g["key"] == "cpu_vs_echo")
        if goal["ratio"] is None or goal["ratio"] > max_cpu_ratio:
            problems.append(f"CPU per CALL against the echo server: {goal['measured']}, bound {max_cpu_ratio}×")
        else:
            log(f"CPU per CALL against the echo server: {goal['measured']}, within the bound of {max_cpu_ratio}×")
    runs = [("capacity", results["capacity"]["summary"])]
    for variant in results["fsync"]["variants"]:
        runs += [
            (f"{variant['name']}: highest rate", variant["max"]),
            (f"{variant['name']}: same load", variant["fixed"]),
        ]
    for server in results["servers"] + [results["kafka"]]:
        runs += [
            (f"{server['name']}: idle memory", server["memory"]["summary"]),
            (f"{server['name']}: highest rate", server["max"]),
        ]
        runs += [(f"{server['name']}: {key} load", run) for key, run in server["latency"].items()]
    for variant in results.get("security", []):
        if "memory" in variant:
            runs.append((f"{variant['name']}: idle memory", variant["memory"]["summary"]))
        if "max" in variant:
            runs.append((f"{variant['name']}: highest rate", variant["max"]))
    for label, summary in runs:
        if summary["errors"]:
            problems.append(f"{label}: errors {summary['errors']}")
        if summary["all_booted_after_s"] is None:
            problems.append(f"{label}: not every charge point booted")
    storm = results["storm"]["storm"] or {}
    if storm.get("recovered_after_s") is None:
        problems.append("reconnect storm: not every charge point booted again")
    for variant in results.get("security", []):
        if "storm" in variant and ((variant["storm"]["storm"] or {}).get("recovered_after_s")) is None:
            problems.append(f"{variant['name']}: reconnect storm: not every charge point booted again")
    return problems


if __name__ == "__main__":
    main()
