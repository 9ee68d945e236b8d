#!/usr/bin/env python3
"""The soak's stand-in for the PBX (bench/sipload.py starts it): a 200 to every request, over UDP, TCP and TLS,
until killed; prints ``ready udp:PORT tcp:PORT tls:PORT`` once it listens. A process of its own, so that a
benchmark can kill it and start it again on the same ports (a PBX restart).

    python bench/responder.py --udp 127.0.0.1:0 --tcp 127.0.0.1:0 --tls 127.0.0.1:0 --cert C.pem --key C.pem
"""

from __future__ import annotations

import argparse
import ssl

import trio

from faultlab.sip import NEED_DATA, KeepAlive, SipError, StreamFramer, build_response, parse_datagram

TRANSPORTS = ("udp", "tcp", "tls")
RECEIVE = 65536
UDP_BUFFER = 4 * 1024 * 1024  # like a real PBX's: bursts of a whole window fit


def _answer(data: bytes | None, msg=None) -> bytes | None:
    """The 200 to a request (None for a response, a keep-alive or what does not parse)."""
    try:
        msg = msg if msg is not None else parse_datagram(data)
    except SipError:
        return None
    if isinstance(msg, KeepAlive) or not msg.is_request or msg.method == "ACK":
        return None
    return build_response(msg, 200)


async def _respond_udp(sock: trio.socket.SocketType) -> None:
    while True:
        data, src = await sock.recvfrom(RECEIVE)
        reply = _answer(data)
        if reply is not None:
            await sock.sendto(reply, src)


async def respond_stream(stream: trio.abc.Stream) -> None:
    """A 200 to every request on ``stream`` until it ends; then close it."""
    framer = StreamFramer()
    try:
        while data := await stream.receive_some(RECEIVE):
            framer.receive_data(data)
            replies = []
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, KeepAlive):
                    continue
                if (reply := _answer(None, event)) is not None:
                    replies.append(reply)
            if replies:
                await stream.send_all(b"".join(replies))
    except (trio.BrokenResourceError, trio.ClosedResourceError, SipError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _hostport(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host, int(port)


def _tls(cert: str, key: str):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handler(stream: trio.SocketStream) -> None:
        await respond_stream(trio.SSLStream(stream, ctx, server_side=True))
    return handler


async def respond(args: argparse.Namespace) -> None:
    """Serve until killed; print ``ready udp:PORT tcp:PORT tls:PORT`` (those asked for) once listening."""
    ready = []
    async with trio.open_nursery() as nursery:
        if args.udp:
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            for opt in (trio.socket.SO_RCVBUF, trio.socket.SO_SNDBUF):
                sock.setsockopt(trio.socket.SOL_SOCKET, opt, UDP_BUFFER)
            await sock.bind(_hostport(args.udp))
            nursery.start_soon(_respond_udp, sock)
            ready.append(f"udp:{sock.getsockname()[1]}")
        for name in ("tcp", "tls"):
            spec = getattr(args, name)
            if not spec:
                continue
            host, port = _hostport(spec)
            handler = respond_stream if name == "tcp" else _tls(args.cert, args.key)
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            ready.append(f"{name}:{listeners[0].socket.getsockname()[1]}")
        print("ready " + " ".join(ready), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description="The soak's responder: a 200 to every request.")
    for t in TRANSPORTS:
        p.add_argument(f"--{t}", metavar="HOST:PORT", help=f"answer over {t.upper()} here (port 0: any)")
    p.add_argument("--cert", help="PEM with the TLS key and certificate chain")
    p.add_argument("--key", help="PEM with the TLS key (may be --cert's file)")
    trio.run(respond, p.parse_args())


if __name__ == "__main__":
    main()
