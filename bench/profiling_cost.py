#!/usr/bin/env python3
"""What `GET /api/v1/debug/profile` costs while it samples: the gateway (release build,
`--events none`, log level warn) on CPU 1, the simulator on CPU 0, 1,000 charge points in a
closed loop (telemetry, `--rate max`), alternately without and with a profile taken over
the whole measurement window; prints each run and the means of the gateway's CPU time per
answered CALL. Build first: `cargo build --release -p charge-point-gateway -p
charge-point-simulator`. Usage: bench/profiling_cost.py [ROUNDS]
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
TICKS = os.sysconf("SC_CLK_TCK")
WINDOW_S = 12


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(profile):
    port, admin, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ, CPGW_ADMIN__PROFILING="true", CPGW_LOG__LEVEL="warn")
    gateway = subprocess.Popen(
        ["taskset", "-c", "1", str(BIN / "charge-point-gateway"),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
         "--metrics-listen", f"127.0.0.1:{metrics}", "--events", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    simulator = subprocess.Popen(
        ["taskset", "-c", "0", str(BIN / "charge-point-simulator"), "load",
         "--url", f"ws://127.0.0.1:{port}/ocpp", "-n", "1000", "--versions", "1.6=50,2.0.1=50",
         "--scenario", "telemetry", "--rate", "max", "--ramp-rate", "2000", "--warmup", "3s",
         "--duration", f"{WINDOW_S}s", "--source-addresses", "127.0.0.2-127.0.0.11",
         "--format", "json", "--progress", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    opened = None
    for line in simulator.stderr:
        if "measuring]" in line and opened is None:
            opened = (cpu_seconds(gateway.pid), time.monotonic())
            if profile:
                url = f"http://127.0.0.1:{admin}/api/v1/debug/profile?seconds={WINDOW_S - 1}"
                threading.Thread(target=lambda: urllib.request.urlopen(url, timeout=60).read()).start()
    summary = json.loads(simulator.stdout.read())
    simulator.wait()
    closed = (cpu_seconds(gateway.pid), time.monotonic())
    gateway.terminate()
    gateway.wait()
    rate = summary["window"]["answered_per_s"]
    return rate, (closed[0] - opened[0]) / (closed[1] - opened[1]) * 1e6 / rate


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    runs = {False: [], True: []}
    for _ in range(rounds):
        for profile in (False, True):
            rate, us = run(profile)
            runs[profile].append(us)
            print(f"{'profiling' if profile else 'plain':9}  {rate:8.0f} CALL/s  {us:5.1f} µs CPU per CALL", flush=True)
    plain, profiled = (sum(v) / len(v) for v in (runs[False], runs[True]))
    print(f"mean: plain {plain:.1f} µs, while profiling {profiled:.1f} µs per CALL ({profiled / plain:.2f}×)")


if __name__ == "__main__":
    main()
