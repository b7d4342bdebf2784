#!/usr/bin/env python3
"""A flame graph of the gateway under load, taken with its own profiling endpoint.

The gateway (JSON-lines events, log level info: what bench.py runs) on CPU 1, with
`admin.profiling` on; the simulator on CPU 0 (1,000 charge points, telemetry, closed
loop, or `--rate`). Over the measurement window it takes `GET /api/v1/debug/profile` twice, once as
an SVG flame graph (written to OUTPUT) and once as collapsed stacks (kept with
`--stacks`), and prints the functions with the most samples, on their own and with what
they call.

    bench/flamegraph.py bench/flamegraphs/after.svg [--bin-dir target/release] [--seconds 10]
"""

import argparse
import collections
import sys
import threading
import urllib.request
from pathlib import Path

from bench import ROOT, Bench


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="where the SVG goes")
    parser.add_argument("--stacks", help="also write the collapsed stacks here")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--seconds", type=int, default=10, help="length of each profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--events", choices=["file", "none"], default="file", help="where events go (none: no event sink at all)")
    parser.add_argument("--rate", type=float, help="offered CALL/s (default: a closed loop, the highest rate)")
    args = parser.parse_args()

    bench = Bench(argparse.Namespace(quick=False, bin_dir=args.bin_dir, verbose=False, python=sys.executable, tansu="tansu"))
    bench.settings.duration = f"{2 * args.seconds + 3}s"
    server = bench.gateway(extra_env={"CPGW_ADMIN__PROFILING": "true"}, events=args.events)
    admin_index = server.command.index("--admin-listen") + 1
    admin = server.command[admin_index]
    taken = {}

    def take():
        for fmt in ("svg", "collapsed"):
            url = f"http://{admin}/api/v1/debug/profile?seconds={args.seconds}&format={fmt}"
            with urllib.request.urlopen(url, timeout=args.seconds + 60) as response:
                taken[fmt] = response.read()

    profiler = threading.Thread(target=take)
    try:
        load = bench.telemetry_load(
            f"{args.rate / bench.settings.load_connections:.4f}" if args.rate else "max"
        )
        summary = bench.simulate(server, "profiled load", load, on_measuring=lambda: profiler.start() or True)
        profiler.join()
    finally:
        server.stop()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(taken["svg"])
    collapsed = taken["collapsed"].decode()
    if args.stacks:
        Path(args.stacks).write_text(collapsed)
    print(
        f"{summary['window']['answered_per_s']:.0f} CALL/s, server {summary['cpu']['server_us_per_call']:.2f} µs per CALL; "
        f"flame graph in {output}"
    )
    own, total = collections.Counter(), collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        count = int(count)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    for title, counter in (("on their own", own), ("with what they call", total)):
        print(f"\nmost samples, {title} (of {samples}):")
        for frame, count in counter.most_common(args.top):
            print(f"  {count / samples * 100:5.1f}%  {frame[:160]}")


if __name__ == "__main__":
    main()
