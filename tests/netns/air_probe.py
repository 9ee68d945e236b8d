"""SIP OPTIONS probes from a device namespace to the PBX's real address, for measuring the lab's air.

Run inside a device namespace (stdlib only, so any python3 will do):

    python3 air_probe.py udp 10.213.0.2 5060 200 0.01
    python3 air_probe.py tcp 10.213.0.2 5060 120 0.025
    python3 air_probe.py tls 10.213.0.2 5061 120 0.025 --cafile ca.crt

Prints one JSON object. UDP: one OPTIONS every GAP seconds, each with its own Call-ID; ``rtts`` are
the round trips of those answered (no retransmission: a lost request or answer is simply missing).
TCP/TLS: one new connection per probe, started every GAP seconds; per probe ``connect`` (TCP
handshake), ``tls`` (TLS handshake, TLS only) and ``exchange`` (OPTIONS sent -> its answer's end read),
each in seconds, or None when it did not finish within the timeout, and the TLS ``version``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import ssl
import threading
import time
import uuid


def options(transport: str, host: str, port: int, local: tuple[str, int], call_id: str) -> bytes:
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {local[0]}:{local[1]};branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{local[0]}>;tag={call_id[:8]}\r\n"
        f"To: <sip:{host}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def udp(host: str, port: int, count: int, gap: float, drain: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.connect((host, port))
    local = s.getsockname()
    s.setblocking(False)
    sent: dict[str, float] = {}
    rtts: dict[str, float] = {}
    start = time.monotonic()
    end = start + count * gap + drain
    i = 0
    while True:
        now = time.monotonic()
        if i < count and now >= start + i * gap:
            call_id = uuid.uuid4().hex
            sent[call_id] = now
            s.send(options("udp", host, port, local, call_id))
            i += 1
            continue
        if now >= end:
            break
        nxt = start + i * gap if i < count else end
        if select.select([s], [], [], max(0.0, min(nxt, end) - now))[0]:
            while True:
                try:
                    data = s.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"call-id:"):
                        call_id = line.split(b":", 1)[1].strip().decode(errors="replace")
                        if call_id in sent and call_id not in rtts:
                            rtts[call_id] = time.monotonic() - sent[call_id]
    return {"transport": "udp", "sent": len(sent), "rtts": sorted(rtts.values())}


def stream_probe(transport: str, host: str, port: int, timeout: float, ctx: ssl.SSLContext | None,
                 tls_name: str | None) -> dict:
    out: dict = {"connect": None, "tls": None, "exchange": None, "version": None}
    t0 = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return out
    out["connect"] = time.monotonic() - t0
    # No Nagle: the OPTIONS written right after the TLS Finished must not wait for that Finished's ACK.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if ctx is not None:
            t1 = time.monotonic()
            s = ctx.wrap_socket(s, server_hostname=tls_name or host)
            out["tls"] = time.monotonic() - t1
            out["version"] = s.version()
        call_id = uuid.uuid4().hex
        t2 = time.monotonic()
        s.sendall(options(transport, host, port, s.getsockname(), call_id))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
        if call_id.encode() in data:
            out["exchange"] = time.monotonic() - t2
    except (OSError, ssl.SSLError):
        pass
    finally:
        s.close()
    return out


def stream(transport: str, host: str, port: int, count: int, gap: float, timeout: float, cafile: str | None,
           tls_name: str | None) -> dict:
    ctx = None
    if transport == "tls":
        ctx = ssl.create_default_context(cafile=cafile)
    results: list[dict] = [{} for _ in range(count)]

    def one(i: int) -> None:
        results[i] = stream_probe(transport, host, port, timeout, ctx, tls_name)

    threads = []
    start = time.monotonic()
    for i in range(count):
        delay = start + i * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout * 3 + 5)
    return {"transport": transport, "sent": count, "probes": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("transport", choices=("udp", "tcp", "tls"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("gap", type=float, help="seconds between probes")
    p.add_argument("--drain", type=float, default=1.0, help="UDP: seconds to wait for answers after the last")
    p.add_argument("--timeout", type=float, default=8.0, help="TCP/TLS: seconds for each step")
    p.add_argument("--cafile", help="TLS: the CA to verify the certificate with")
    p.add_argument("--tls-name", help="TLS: the name to verify (default: HOST)")
    a = p.parse_args()
    if a.transport == "udp":
        out = udp(a.host, a.port, a.count, a.gap, a.drain)
    else:
        out = stream(a.transport, a.host, a.port, a.count, a.gap, a.timeout, a.cafile, a.tls_name)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
