#!/usr/bin/env python3
"""Two builds of the gateway side by side: CPU per answered CALL and latency, alternating
the builds over several rounds so that the machine's noise falls on both alike.

Each round starts each build afresh (JSON-lines events, log level info: what bench.py
runs) on CPU 1 and drives it from CPU 0 with the same simulator (1,000 charge points,
telemetry) at a fixed offered rate, then in a closed loop. Prints every run, the means
and the ratio of the second build to the first.

    cargo build --release ... && cp target/release/charge-point-gateway /tmp/before/
    (change, build again)
    bench/ab.py /tmp/before target/release [--rounds 3] [--rate 12000]
"""

import argparse
import statistics
import sys
from pathlib import Path

from bench import ROOT, Bench


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="folder with the first build's charge-point-gateway")
    parser.add_argument("second", help="folder with the second build's charge-point-gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=12_000, help="offered CALL/s of the fixed-rate runs")
    parser.add_argument("--simulator", default=str(ROOT / "target/release/charge-point-simulator"))
    args = parser.parse_args()

    benches = {}
    for label, folder in (("first", args.first), ("second", args.second)):
        bench = Bench(argparse.Namespace(quick=False, bin_dir=folder, verbose=False, python=sys.executable, tansu="tansu"))
        bench.simulator = Path(args.simulator)
        benches[label] = bench
    figures = {label: {"fixed": [], "fixed_p99": [], "max": [], "max_rate": []} for label in benches}
    for round_number in range(1, args.rounds + 1):
        for label, bench in benches.items():
            server = bench.gateway(name=f"{label} build")
            try:
                fixed = bench.latency_at(server, f"round {round_number}, {label}: {args.rate:.0f} CALL/s", args.rate)
                closed = bench.simulate(server, f"round {round_number}, {label}: highest rate", bench.telemetry_load("max"))
            finally:
                server.stop()
            f = figures[label]
            f["fixed"].append(fixed["cpu"]["server_us_per_call"])
            f["fixed_p99"].append(fixed["latency_ms"]["p99"])
            f["max"].append(closed["cpu"]["server_us_per_call"])
            f["max_rate"].append(closed["window"]["answered_per_s"])
            print(
                f"round {round_number} {label:6}: {args.rate:.0f} CALL/s: {fixed['cpu']['server_us_per_call']:.2f} µs/CALL, "
                f"p99 {fixed['latency_ms']['p99']:.2f} ms | highest rate {closed['window']['answered_per_s']:.0f} CALL/s: "
                f"{closed['cpu']['server_us_per_call']:.2f} µs/CALL",
                flush=True,
            )
    mean = {label: {key: statistics.mean(values) for key, values in f.items()} for label, f in figures.items()}
    a, b = mean["first"], mean["second"]
    print(
        f"means: first {a['fixed']:.2f} / second {b['fixed']:.2f} µs per CALL at {args.rate:.0f} CALL/s "
        f"(second/first {b['fixed'] / a['fixed']:.2f}×); at the highest rate {a['max']:.2f} / {b['max']:.2f} µs "
        f"({b['max'] / a['max']:.2f}×), {a['max_rate']:.0f} / {b['max_rate']:.0f} CALL/s; "
        f"p99 at {args.rate:.0f} CALL/s {a['fixed_p99']:.2f} / {b['fixed_p99']:.2f} ms"
    )


if __name__ == "__main__":
    main()
