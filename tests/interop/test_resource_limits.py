"""The real binary under a small open-file limit: charge point sockets that would take the
descriptors the rest of the process needs are closed at once, so the admin API's probes
keep answering and accept() never fails with EMFILE."""

import select
import socket
import time
import urllib.request

import pytest

from support.gateway import Gateway, gateway_binary

OPEN_FILES = 400
# More than the process may open: without a budget, accept() fails with EMFILE and the
# probe times out (seen with the gateway before the budget existed).
SLOW_CLIENTS = 450


@pytest.fixture
def limited_gateway():
    gw = Gateway(gateway_binary(), extra_env={"CPGW_ADMIN__MAX_CONNECTIONS": "8"}, open_files=OPEN_FILES)
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


def livez(admin_addr: str) -> int:
    with urllib.request.urlopen(f"http://{admin_addr}/livez", timeout=5) as response:
        return response.status


def test_slow_charge_point_sockets_cannot_starve_the_probes(limited_gateway):
    host, port = limited_gateway.ocpp_addr.rsplit(":", 1)
    # Clients that connect and never send their handshake: each holds a descriptor for
    # up to listener.handshake_timeout. More of them than the process may open.
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            slow.append(socket.create_connection((host, int(port)), timeout=5))
        # The gateway closes the sockets beyond its budget as soon as it accepts them.
        closed = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in slow if s not in closed], [], [], 0.5)
            for s in readable:
                try:
                    if s.recv(1) == b"":
                        closed.add(s)
                except ConnectionResetError:
                    closed.add(s)
            if closed and not readable:
                break
        assert closed, "no socket was closed: the budget did not apply"
        assert len(closed) < SLOW_CLIENTS, "every socket was closed"
        # The probe still answers while the charge point side is full.
        assert livez(limited_gateway.admin_addr) == 200
        log = limited_gateway.log_text()
        assert "accept failed" not in log, log[-2000:]
        assert "open-file budget is spent" in log
    finally:
        for s in slow:
            s.close()
