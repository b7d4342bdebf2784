"""Helpers the security interop tests share: a PyPI `ocpp` charge point running over a
WebSocket for the length of a block, the admin API, and one metric from a scrape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request

import websockets

STEP_TIMEOUT_S = 15.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.asynccontextmanager
async def charge_point(cp_class, url: str, subprotocol: str, **options):
    """`async with charge_point(ChargePoint, url, "ocpp1.6", ssl=...) as cp:` connects
    `cp_class` (named by the URL's last segment) and runs its receive loop until the block
    ends; `options` go to `websockets.connect`."""
    ws = await websockets.connect(
        url, subprotocols=[subprotocol], proxy=None, open_timeout=STEP_TIMEOUT_S, **options
    )
    cp = cp_class(url.rsplit("/", 1)[1], ws, response_timeout=10)
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)


def admin(gw, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    """A request on the gateway's admin API: the status and the body's text."""
    request = urllib.request.Request(
        f"http://{gw.admin_addr}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with _OPENER.open(request, timeout=STEP_TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(gw, series: str) -> float:
    """The value of one series (name and labels, as the scrape prints them)."""
    with _OPENER.open(f"http://{gw.metrics_addr}/metrics", timeout=STEP_TIMEOUT_S) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    raise AssertionError(f"{series} not in the scrape")


async def metric_reaches(gw, series: str, value: float) -> None:
    """Waits until `series` is at least `value` (counted just after what the test saw)."""
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    while metric(gw, series) < value:
        assert asyncio.get_running_loop().time() < deadline, f"{series} never reached {value}"
        await asyncio.sleep(0.02)
