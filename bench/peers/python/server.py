"""Benchmark peer server: an OCPP central system built on the PyPI `ocpp`
package (its v16 and v201 ChargePoint classes) over `websockets`, run side by
side with the gateway so the benchmark can compare it against a server people
would otherwise pick. It answers only the four actions the load sends
(BootNotification, Heartbeat, StatusNotification, MeterValues), for both OCPP
1.6 and 2.0.1.

    python server.py --port 9000 --host 127.0.0.1

Prints one line `listening on HOST:PORT` once it accepts connections
(--port 0 picks a free port, and the line shows which).
"""

import argparse
import asyncio
import logging
import signal
from datetime import datetime, timezone
from urllib.parse import unquote

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import RegistrationStatus
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from ocpp.v201.enums import RegistrationStatusEnumType
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class CentralSystem16(ChargePoint16):
    @on(Action16.boot_notification)
    def on_boot_notification(self, **_):
        return result16.BootNotification(
            current_time=now(), interval=300, status=RegistrationStatus.accepted
        )

    @on(Action16.heartbeat)
    def on_heartbeat(self, **_):
        return result16.Heartbeat(current_time=now())

    @on(Action16.status_notification)
    def on_status_notification(self, **_):
        return result16.StatusNotification()

    @on(Action16.meter_values)
    def on_meter_values(self, **_):
        return result16.MeterValues()


class CentralSystem201(ChargePoint201):
    @on(Action201.boot_notification)
    def on_boot_notification(self, **_):
        return result201.BootNotification(
            current_time=now(), interval=300, status=RegistrationStatusEnumType.accepted
        )

    @on(Action201.heartbeat)
    def on_heartbeat(self, **_):
        return result201.Heartbeat(current_time=now())

    @on(Action201.status_notification)
    def on_status_notification(self, **_):
        return result201.StatusNotification()

    @on(Action201.meter_values)
    def on_meter_values(self, **_):
        return result201.MeterValues()


HANDLERS = {"ocpp1.6": CentralSystem16, "ocpp2.0.1": CentralSystem201}


async def on_connect(ws):
    # websockets refuses (HTTP 400) a client that offers none of HANDLERS'
    # subprotocols, so one of them was negotiated.
    handler = HANDLERS[ws.subprotocol]
    # Any path is accepted; the charge point's identity is its last segment.
    path = ws.request.path.split("?", 1)[0]
    identity = unquote(path.rstrip("/").rsplit("/", 1)[-1])
    try:
        await handler(identity, ws).start()
    except ConnectionClosed:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark peer OCPP server (ocpp + websockets).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()

    # The ocpp package logs every message at INFO; keep the hot path quiet.
    logging.basicConfig(level=logging.WARNING)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    # websockets' defaults are kept on purpose (keepalive pings, max_size,
    # permessage-deflate): they are what a user of this stack would run.
    async with serve(
        on_connect, args.host, args.port, subprotocols=list(HANDLERS)
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {args.host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
