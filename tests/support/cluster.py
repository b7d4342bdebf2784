"""A gateway cluster for the Python tests: a real `redis-server`, three gateway nodes
sharing it, and HAProxy in front running deploy/haproxy/haproxy.cfg as it is.

`ClusterUnderTest` offers what the interop tests use of a single `Gateway`:
`ocpp_addr` (HAProxy's), `admin_addr` (a node's: any node answers commands for any
charge point), `admin_addrs` (every node's, for per-node views such as recent events),
and the logs of every node.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from support.charge_points import metric
from support.gateway import Gateway, gateway_binary
from support.process import Process, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
NODES = 3
INTERNAL_TOKEN = "interop-cluster-token-0123456789"
STARTUP_TIMEOUT_S = 30.0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class RedisServer(Process):
    """Debian's redis-server on a free loopback port, keeping nothing on disk."""

    def __init__(self):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is installed by scripts/build-deps.sh"
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__("redis", argv)

    def start(self) -> None:
        super().start()
        wait_until(lambda: _listening(self.port), STARTUP_TIMEOUT_S, "redis-server listening")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


class ClusterUnderTest:
    def __init__(self, extra_env: dict | None = None):
        self.redis = RedisServer()
        self.nodes: list[Gateway] = []
        self.extra_env = extra_env or {}
        self.haproxy: Process | None = None
        self.lb_port = free_port()

    def start(self) -> None:
        self.redis.start()
        for n in range(1, NODES + 1):
            env = {
                "CPGW_NODE_ID": f"gw-{n}",
                "CPGW_CLUSTER__REDIS_URLS": f'["{self.redis.url}"]',
                "CPGW_CLUSTER__INTERNAL_ADDRESS": f"127.0.0.1:{free_port()}",
                "CPGW_CLUSTER__INTERNAL_TOKEN": INTERNAL_TOKEN,
                **self.extra_env,
            }
            node = Gateway(gateway_binary(), extra_env=env)
            node.start()
            self.nodes.append(node)
        binary = shutil.which("haproxy")
        assert binary, "haproxy is installed by scripts/build-deps.sh"
        env = dict(os.environ, CPGW_LB_BIND=f"127.0.0.1:{self.lb_port}")
        for n, node in enumerate(self.nodes, start=1):
            env[f"CPGW_NODE{n}_OCPP"] = node.ocpp_addr
            env[f"CPGW_NODE{n}_ADMIN_PORT"] = node.admin_addr.rsplit(":", 1)[1]
        self.haproxy = Process("haproxy", [binary, "-f", str(HAPROXY_CONFIG), "-db"], env=env)
        self.haproxy.start()
        wait_until(lambda: _listening(self.lb_port), STARTUP_TIMEOUT_S, "haproxy listening")

    @property
    def ocpp_addr(self) -> str:
        return f"127.0.0.1:{self.lb_port}"

    @property
    def admin_addr(self) -> str:
        return self.nodes[0].admin_addr

    @property
    def admin_addrs(self) -> list[str]:
        return [node.admin_addr for node in self.nodes]

    def log_text(self, last: int | None = None) -> str:
        return "\n".join(f"[gw-{n}] {node.log_text(last)}" for n, node in enumerate(self.nodes, 1))

    def log_lines_matching(self, needle: str, last: int = 200) -> str:
        return "\n".join(
            f"[gw-{n}] {text}"
            for n, node in enumerate(self.nodes, 1)
            if (text := node.log_lines_matching(needle, last))
        )

    def forwarded(self) -> float:
        """Commands the first node forwarded to another node and got an answer for."""
        series = 'ocppgw_cluster_forwards_total{result="answered"}'
        return metric(self.nodes[0], series)

    def stop(self, timeout_s: float) -> int | None:
        """Stops HAProxy, then every node gracefully (the first failing code, or None when
        a node had to be killed), then Redis."""
        if self.haproxy is not None:
            self.haproxy.stop(10.0)
        codes = [node.stop(timeout_s) for node in self.nodes]
        self.redis.stop(10.0)
        if any(code is None for code in codes):
            return None
        return next((code for code in codes if code != 0), 0)
