#!/usr/bin/env python3
"""The cluster benchmark (docs/cluster.md): several gateway nodes sharing a registry in a
real `redis-server`, measured on this one machine.

- capacity: N nodes, each with its own simulator process (its own open-file limit) and
  C idle charge points: memory per connection on every node, Redis memory per 1,000
  charge points, Redis commands per second while they are idle and during a reconnect
  storm of all of them (every simulator killed and started again with no ramp), and the
  time until every charge point is connected and claimed again;
- commands: latency of admin API commands answered by the charge point, p50 and p99 at a
  stated rate, sent to the node that holds the charge points (local) and to another node
  (forwarded), side by side;
- takeover: a charge point connected to node A connects to node B; the time from B's
  handshake until A has closed its connection;
- recovery: HAProxy (deploy/haproxy/haproxy.cfg) in front of three nodes; one node is
  killed (SIGKILL) while it holds its share of the charge points; the time until every
  charge point is claimed again by a live node.

Run by bench/run.sh after bench/bench.py; prints a Markdown section and appends it to
the report (`--output`). `--quick` shrinks every size for a smoke run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench import PAGE_KB, ROOT, free_port

TOKEN = "bench-cluster-internal-token-0123"


def log(message):
    print(f"cluster bench: {message}", file=sys.stderr, flush=True)


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def percentile(values, share):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Settings:
    def __init__(self, quick):
        self.quick = quick
        self.nodes = 2 if quick else 5
        self.per_node = 300 if quick else 19_000
        self.ramp_rate = 1_000
        self.idle_window = 3 if quick else 10
        self.commands = 200 if quick else 2_000
        self.command_rate = 100 if quick else 200
        self.command_charge_points = 20 if quick else 100
        self.takeovers = 20 if quick else 200
        self.recovery_charge_points = 150 if quick else 3_000


class Child:
    """A process of the run, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, name, command, env=None, stdout=subprocess.DEVNULL):
        self.name = name
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KB

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Redis(Child):
    def __init__(self):
        self.port = free_port()
        super().__init__(
            "redis",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
        wait_for(lambda: self.command("PING") == "PONG", 20, "redis-server")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def command(self, *args):
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    def info(self):
        fields = {}
        for line in self.command("INFO").splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        return fields

    def used_memory(self):
        return int(self.info()["used_memory"])

    def commands_processed(self):
        return int(self.info()["total_commands_processed"])

    def owners(self):
        """{node: records} over every owner record (a Lua scan inside Redis)."""
        script = (
            "local counts = {} for _, key in ipairs(redis.call('KEYS', ARGV[1])) do "
            "local node = redis.call('HGET', key, 'node') counts[node] = (counts[node] or 0) + 1 end "
            "local out = {} for node, n in pairs(counts) do table.insert(out, node) table.insert(out, n) end "
            "return out"
        )
        reply = self.command("EVAL", script, "0", "cpgw:cp:*:owner").split()
        return {reply[i]: int(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


class Node(Child):
    def __init__(self, bench, name):
        self.node_name = name
        self.ocpp, self.admin, self.metrics, self.internal = (free_port() for _ in range(4))
        env = {
            "CPGW_NODE_ID": name,
            "CPGW_LOG__LEVEL": "warn",
            "CPGW_SESSION__PING_INTERVAL": "10s",
            "CPGW_CLUSTER__REDIS_URLS": f'["{bench.redis.url}"]',
            "CPGW_CLUSTER__INTERNAL_ADDRESS": f"127.0.0.1:{self.internal}",
            "CPGW_CLUSTER__INTERNAL_TOKEN": TOKEN,
            "CPGW_CLUSTER__LEASE_TIME": "3s",
            "CPGW_LISTENER__MAX_CONNECTIONS_PER_ADDRESS": "100000",
        }
        command = [
            str(bench.bin / "charge-point-gateway"),
            "--listen", f"127.0.0.1:{self.ocpp}",
            "--admin-listen", f"127.0.0.1:{self.admin}",
            "--metrics-listen", f"127.0.0.1:{self.metrics}",
            "--events", "none",
        ]
        super().__init__(name, command, env=env)
        wait_for(self.ready, 60, f"{name} ready")

    def ready(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=2) as response:
            return response.status == 200

    def series(self, prefix):
        """The sum of every series whose line starts with `prefix`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    def connections(self):
        return self.series("ocppgw_connections{")

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.ocpp}/ocpp"


class ClusterBench:
    def __init__(self, args):
        self.args = args
        self.settings = Settings(args.quick)
        self.bin = Path(args.bin_dir)
        self.children = []
        self.redis = None

    def start(self, child):
        self.children.append(child)
        return child

    def fleet(self, nodes, ramp_rate):
        """One simulator per node, each with its own block of source addresses (its own
        ephemeral ports) and its own open-file limit."""
        return [
            self.simulator(
                node.url,
                self.settings.per_node,
                f"N{i + 1}-",
                f"127.0.{i + 1}.1-127.0.{i + 1}.4",
                extra=["--ramp-rate", str(ramp_rate)],
            )
            for i, node in enumerate(nodes)
        ]

    def simulator(self, url, count, prefix, sources, extra=(), duration="600s"):
        command = [
            str(self.bin / "charge-point-simulator"), "load",
            "--url", url,
            "-n", str(count),
            "--id-prefix", prefix,
            "--versions", "1.6",
            "--scenario", "idle",
            "--duration", duration,
            "--source-addresses", sources,
            "--reconnect-min", "0s",
            "--reconnect-jitter", "1s",
            "--progress", "0s",
            "--format", "json",
            *(extra or ["--ramp-rate", str(self.settings.ramp_rate)]),
        ]
        return self.start(Child(f"simulator {prefix}", command, stdout=subprocess.PIPE))

    # --- capacity, idle and storm ---------------------------------------------------------

    def capacity(self):
        s = self.settings
        self.redis = self.start(Redis())
        nodes = [self.start(Node(self, f"gw-{i + 1}")) for i in range(s.nodes)]
        time.sleep(2)
        baselines = [node.rss_kb() for node in nodes]
        redis_baseline = self.redis.used_memory()
        total = s.nodes * s.per_node
        started = time.monotonic()
        simulators = self.fleet(nodes, ramp_rate=s.ramp_rate)
        wait_for(
            lambda: sum(node.connections() for node in nodes) >= total,
            900,
            f"{total} charge points connected",
            interval=1,
        )
        connected_after = time.monotonic() - started
        log(f"{total} charge points connected to {s.nodes} nodes in {connected_after:.1f} s")
        # The last claims settle (a claim that timed out under the ramp's load is made by
        # the node's next maintenance round); then the idle window.
        wait_for(lambda: sum(self.redis.owners().values()) >= total, 120, "every claim in Redis", interval=2)
        wait_for(
            lambda: sum(node.series("ocppgw_cluster_unsynced_sessions") for node in nodes) == 0,
            120,
            "no claim waiting",
            interval=1,
        )
        claims_retried = sum(node.series('ocppgw_cluster_claims_total{result="failed"}') for node in nodes)
        time.sleep(2)
        before, at = self.redis.commands_processed(), time.monotonic()
        time.sleep(s.idle_window)
        idle_ops = (self.redis.commands_processed() - before) / (time.monotonic() - at)
        rss = [node.rss_kb() for node in nodes]
        per_connection = [(r - b) * 1024 / s.per_node for r, b in zip(rss, baselines)]
        redis_per_thousand = (self.redis.used_memory() - redis_baseline) / total * 1000
        # The storm: every charge point drops at once (the simulators are killed) and
        # connects again at once (new simulators, no ramp): the gateways see every
        # connection lost, release its claim, and claim it again; Redis commands are counted
        # from the drop until every charge point is connected and claimed again.
        for simulator in simulators:
            simulator.kill()
        before_storm, storm_started = self.redis.commands_processed(), time.monotonic()
        log("reconnect storm: every charge point drops and reconnects at once")
        simulators = self.fleet(nodes, ramp_rate=0)
        # A connection is counted open after its claim: once all are, all claims are
        # made. (Counting the claims in Redis itself would add its own commands.)
        wait_for(
            lambda: sum(node.connections() for node in nodes) >= total,
            900,
            "every charge point connected again",
            interval=0.5,
        )
        storm_s = time.monotonic() - storm_started
        storm_ops = (self.redis.commands_processed() - before_storm) / storm_s
        wait_for(lambda: sum(self.redis.owners().values()) >= total, 120, "every claim again", interval=2)
        log(f"storm: all connected and claimed again after {storm_s:.1f} s, {storm_ops:.0f} Redis commands/s")
        for simulator in simulators:
            simulator.kill()
        for node in nodes:
            node.stop()
        self.redis.stop()
        return {
            "nodes": s.nodes,
            "per_node": s.per_node,
            "total": total,
            "connected_after_s": connected_after,
            "bytes_per_connection": per_connection,
            "redis_bytes_per_thousand": redis_per_thousand,
            "redis_ops_idle": idle_ops,
            "claims_retried": claims_retried,
            "storm_s": storm_s,
            "redis_ops_storm": storm_ops,
        }

    # --- commands: local against forwarded ------------------------------------------------

    def commands(self):
        s = self.settings
        self.redis = self.start(Redis())
        a, b = self.start(Node(self, "gw-a")), self.start(Node(self, "gw-b"))
        simulator = self.simulator(a.url, s.command_charge_points, "CMD-", "127.0.9.1")
        wait_for(lambda: a.connections() >= s.command_charge_points, 60, "command charge points")
        wait_for(
            lambda: self.redis.owners().get("gw-a", 0) >= s.command_charge_points, 60, "their claims"
        )
        results = {}
        for label, node in (("local", a), ("forwarded", b)):
            results[label] = self.command_latency(node)
            log(f"commands {label}: p50 {results[label]['p50_ms']:.2f} ms, p99 {results[label]['p99_ms']:.2f} ms")
        simulator.kill()
        for child in (a, b):
            child.stop()
        self.redis.stop()
        return results

    def command_latency(self, node):
        """`commands` ClearCache commands at `command_rate` per second over 8 threads, each
        with a kept-alive HTTP connection; the latency of each admin API call."""
        s = self.settings
        latencies, failures = [], []
        lock = threading.Lock()
        per_thread = s.commands // 8
        interval = 8 / s.command_rate

        def worker(index):
            connection = http.client.HTTPConnection("127.0.0.1", node.admin, timeout=30)
            next_at = time.monotonic()
            for n in range(per_thread):
                cp = f"CMD-{(index * per_thread + n) % s.command_charge_points + 1:06d}"
                body = json.dumps({"action": "ClearCache", "payload": {}})
                time.sleep(max(0, next_at - time.monotonic()))
                next_at += interval
                sent = time.monotonic()
                connection.request("POST", f"/api/v1/charge-points/{cp}/commands", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                elapsed = (time.monotonic() - sent) * 1000
                with lock:
                    if answer.get("status") == "completed":
                        latencies.append(elapsed)
                    else:
                        failures.append(answer)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {
            "count": len(latencies),
            "failures": len(failures),
            "rate": s.command_rate,
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
        }

    # --- takeover ---------------------------------------------------------------------------

    def takeover(self):
        import asyncio

        import websockets

        s = self.settings
        self.redis = self.start(Redis())
        a, b = self.start(Node(self, "gw-a")), self.start(Node(self, "gw-b"))

        async def one(index):
            cp = f"TAKE-{index}"
            old = await websockets.connect(f"{a.url}/{cp}", subprotocols=["ocpp1.6"])
            # Claimed on A once its BootNotification is answered (the claim comes first).
            await old.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}]))
            await asyncio.wait_for(old.recv(), 10)
            new = await websockets.connect(f"{b.url}/{cp}", subprotocols=["ocpp1.6"])
            moved = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(old.recv(), 10)
            except websockets.ConnectionClosed:
                pass
            elapsed = (time.monotonic() - moved) * 1000
            await new.close()
            return elapsed

        async def all_takeovers():
            return [await one(i) for i in range(s.takeovers)]

        times = asyncio.run(all_takeovers())
        for child in (a, b):
            child.stop()
        self.redis.stop()
        result = {"count": len(times), "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99), "max_ms": max(times)}
        log(f"takeover: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
        return result

    # --- recovery after a kill ---------------------------------------------------------------

    def recovery(self):
        s = self.settings
        self.redis = self.start(Redis())
        nodes = [self.start(Node(self, f"gw-{i + 1}")) for i in range(3)]
        lb_port = free_port()
        env = {"CPGW_LB_BIND": f"127.0.0.1:{lb_port}"}
        for i, node in enumerate(nodes, start=1):
            env[f"CPGW_NODE{i}_OCPP"] = f"127.0.0.1:{node.ocpp}"
            env[f"CPGW_NODE{i}_ADMIN_PORT"] = str(node.admin)
        haproxy = self.start(
            Child("haproxy", [shutil.which("haproxy") or "haproxy", "-f", str(ROOT / "deploy/haproxy/haproxy.cfg"), "-db"], env=env)
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", lb_port), timeout=1).close() is None, 20, "haproxy")
        total = s.recovery_charge_points
        simulator = self.simulator(f"ws://127.0.0.1:{lb_port}/ocpp", total, "REC-", "127.0.10.1")
        wait_for(lambda: sum(self.redis.owners().values()) >= total, 120, "every charge point claimed", interval=0.5)
        owners = self.redis.owners()
        victim = nodes[0]
        held = owners.get(victim.node_name, 0)
        log(f"killing {victim.node_name}, which holds {held} of {total} charge points")
        killed = time.monotonic()
        victim.kill()
        live = {node.node_name for node in nodes[1:]}

        def recovered():
            counts = self.redis.owners()
            return sum(n for node, n in counts.items() if node in live) >= total

        wait_for(recovered, 120, "every charge point claimed by a live node", interval=0.1)
        recovery_s = time.monotonic() - killed
        log(f"recovered in {recovery_s:.2f} s")
        simulator.kill()
        haproxy.stop()
        for node in nodes[1:]:
            node.stop()
        self.redis.stop()
        return {"charge_points": total, "held_by_killed": held, "recovery_s": recovery_s}

    def run(self):
        results = {}
        try:
            results["capacity"] = self.capacity()
            results["commands"] = self.commands()
            results["takeover"] = self.takeover()
            results["recovery"] = self.recovery()
        finally:
            for child in reversed(self.children):
                child.kill()
        return results


def report(results, quick):
    c, cmd, t, r = results["capacity"], results["commands"], results["takeover"], results["recovery"]
    per_conn = c["bytes_per_connection"]
    lines = [
        "## Cluster",
        "",
        "Measured by `bench/cluster.py` (run by `bench/run.sh`): gateway nodes sharing a "
        "`redis-server` on this machine, each node with its own simulator process "
        "(its own open-file limit). See [docs/cluster.md](docs/cluster.md)."
        + (" **Quick run: small sizes, not figures of record.**" if quick else ""),
        "",
        "| measure | value |",
        "|---|---|",
        f"| connected charge points | {c['total']:,} ({c['nodes']} nodes × {c['per_node']:,}), all connected after {c['connected_after_s']:.1f} s; {c['claims_retried']:,.0f} claims timed out under the ramp's load and were made by the next maintenance round |",
        f"| memory per idle connection, per node | {', '.join(f'{v / 1024:.1f}' for v in per_conn)} KiB (mean {statistics.mean(per_conn) / 1024:.1f} KiB) |",
        f"| Redis memory per 1,000 charge points | {c['redis_bytes_per_thousand'] / 1024:.1f} KiB |",
        f"| Redis commands per second, idle | {c['redis_ops_idle']:.1f} (each node renews its lease and lists the nodes every `lease_time / 3`: it grows with the nodes, not with the charge points) |",
        f"| reconnect storm of all {c['total']:,} (every connection dropped at once, reconnected with no ramp) | all connected and claimed again after {c['storm_s']:.1f} s; Redis {c['redis_ops_storm']:,.0f} commands/s over it ({c['redis_ops_storm'] * c['storm_s'] / c['total']:.1f} per charge point: release, claim, and the scripts' own reads and writes) |",
        f"| command latency, local (the node holding the charge point), {cmd['local']['rate']}/s | p50 {cmd['local']['p50_ms']:.2f} ms, p99 {cmd['local']['p99_ms']:.2f} ms ({cmd['local']['count']} commands, {cmd['local']['failures']} failed) |",
        f"| command latency, forwarded (another node), {cmd['forwarded']['rate']}/s | p50 {cmd['forwarded']['p50_ms']:.2f} ms, p99 {cmd['forwarded']['p99_ms']:.2f} ms ({cmd['forwarded']['count']} commands, {cmd['forwarded']['failures']} failed); forwarded/local p50 {cmd['forwarded']['p50_ms'] / cmd['local']['p50_ms']:.2f}× |",
        f"| takeover (B's handshake until A has closed), {t['count']} times | p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms |",
        f"| recovery after `kill -9` of a node holding {r['held_by_killed']:,} of {r['charge_points']:,} charge points behind HAProxy | every charge point claimed by a live node {r['recovery_s']:.2f} s after the kill |",
        "",
        "Command latency is the admin API's round trip (a kept-alive HTTP connection per "
        "sender, 8 senders), the charge point's own answer included; forwarded adds the "
        "registry lookup and the internal API hop. Recovery includes the simulator's "
        "reconnect backoff (`--reconnect-min 0s --reconnect-jitter 1s`) and HAProxy "
        "redispatching connections away from the dead node.",
        "",
    ]
    return "\n".join(lines)


def check(results):
    problems = []
    for label in ("local", "forwarded"):
        if results["commands"][label]["failures"]:
            problems.append(f"commands {label}: {results['commands'][label]['failures']} failed")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--output", help="append the section to this Markdown file")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--check", action="store_true", help="exit 1 on any failed command or simulator error")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: scripts/build-deps.sh installs it")
    results = ClusterBench(args).run()
    section = report(results, args.quick)
    print(section)
    if args.output:
        with open(args.output, "a") as output:
            output.write("\n" + section)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.check:
        problems = check(results)
        for problem in problems:
            print(f"cluster bench: {problem}", file=sys.stderr)
        if problems:
            sys.exit(1)


if __name__ == "__main__":
    main()
