#!/usr/bin/env python3
"""Small SIP load generator for bench/relay.py: what sipp cannot do here.

Debian's sipp (sip-tester 3.6.1) is built without TLS, and sipp's response
times have millisecond resolution. This generator covers both:

- UAC over TLS or UDP: N flows (one TLS connection / one UDP socket each), one
  outstanding MESSAGE per flow, the next sent as soon as its 200 arrives.
  Requests sent in [warm_end, meas_end) are "measured": counted, and their
  round-trip time recorded (perf_counter_ns, microsecond resolution).
- UAS over TLS (optional, in the same process): answers every request with a
  200 that copies Via, From, To (adding a tag), Call-ID and CSeq.

One process, one epoll loop, no threads: run it pinned to the load generator's
core. Prints one JSON object on stdout when done.

    python3 bench/loadgen.py --uac tls:127.0.0.1:5061 --user bob --flows 100 \
        (--warm-end EPOCH --meas-end EPOCH | --sync) [--uas tls:127.0.0.1:5062 --cert C --key K]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import ssl
import sys
import time

CRLF2 = b"\r\n\r\n"
TIMEOUT_S = 2.0  # a request unanswered for this long counts as lost


def parse_addr(spec: str) -> tuple[str, str, int]:
    proto, host, port = spec.split(":")
    if proto not in ("udp", "tls"):
        raise SystemExit(f"bad transport in {spec!r}: udp or tls")
    return proto, host, int(port)


def content_length(head: bytes) -> int:
    low = head.lower()
    for key in (b"\r\ncontent-length:", b"\r\nl:"):
        i = low.find(key)
        if i >= 0:
            j = low.find(b"\r\n", i + 2)
            return int(low[i + len(key): j if j >= 0 else len(low)].strip() or 0)
    return 0


def frame(buf: bytearray) -> list[bytes]:
    """Cut whole SIP messages off the front of buf (stream framing)."""
    out = []
    while True:
        while buf[:2] == b"\r\n":  # keep-alive CRLFs
            del buf[:2]
        i = buf.find(CRLF2)
        if i < 0:
            return out
        end = i + 4 + content_length(bytes(buf[:i]))
        if len(buf) < end:
            return out
        out.append(bytes(buf[:end]))
        del buf[:end]


_UAS_COPY = (b"via:", b"v:", b"from:", b"f:", b"call-id:", b"i:", b"cseq:")


def uas_answer(msg: bytes, tag: bytes) -> bytes | None:
    head = msg[: msg.find(CRLF2)]
    lines = head.split(b"\r\n")
    if lines[0].startswith(b"SIP/2.0"):
        return None
    out = [b"SIP/2.0 200 OK"]
    for line in lines[1:]:
        low = line[:9].lower()
        if low.startswith(_UAS_COPY):
            out.append(line)
        elif low.startswith((b"to:", b"t:")):
            out.append(line if b";tag=" in line else line + b";tag=" + tag)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)


class Conn:
    """One socket: a UAC flow, a UAS connection, or a listener."""

    __slots__ = ("sock", "kind", "tls", "handshaking", "inbuf", "outbuf", "want_write",
                 "flow", "cseq", "sent_ns", "sent_t", "outstanding", "done", "lport")

    def __init__(self, sock, kind, tls=False):
        self.sock = sock
        self.kind = kind  # "uac", "uas", "listen"
        self.tls = tls
        self.handshaking = tls
        self.inbuf = bytearray()
        self.outbuf = b""
        self.want_write = False
        self.flow = 0
        self.cseq = 0
        self.sent_ns = 0
        self.sent_t = 0.0
        self.outstanding = False
        self.done = False
        self.lport = 0


class Gen:
    def __init__(self, a):
        self.a = a
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.pid = os.getpid()
        self.st = dict(flows=a.flows, flows_connected=0, all_connected_at=None, sent=0, answered=0, measured_sent=0,
                       measured_answered=0, lost=0, unexpected=0, non_200=0, conn_errors=0,
                       uas_received=0, uas_answered=0, uas_conns=0, uas_unexpected=0, errors=[])
        self.rtts: list[int] = []
        self.tag = b"lg%d" % self.pid
        self.announced = False
        self.stdin_open = False

    # -- plumbing --------------------------------------------------------
    def add(self, c: Conn, ev=select.EPOLLIN):
        self.conns[c.sock.fileno()] = c
        self.ep.register(c.sock.fileno(), ev)

    def close(self, c: Conn, why: str | None = None):
        fd = c.sock.fileno()
        if fd in self.conns:
            self.ep.unregister(fd)
            del self.conns[fd]
        try:
            c.sock.close()
        except OSError:
            pass
        if why:
            self.st["conn_errors"] += 1
            if len(self.st["errors"]) < 10:
                self.st["errors"].append(why)

    def write(self, c: Conn, data: bytes):
        if c.outbuf:
            c.outbuf += data
            return
        try:
            n = c.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            n = 0
        if n < len(data):
            c.outbuf = data[n:]
            if not c.want_write:
                c.want_write = True
                self.ep.modify(c.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def flush(self, c: Conn):
        data, c.outbuf = c.outbuf, b""
        if c.want_write:
            c.want_write = False
            self.ep.modify(c.sock.fileno(), select.EPOLLIN)
        if data:
            self.write(c, data)

    def handshake(self, c: Conn) -> bool:
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.ep.modify(c.sock.fileno(), select.EPOLLIN)
            return False
        except ssl.SSLWantWriteError:
            self.ep.modify(c.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
            return False
        c.handshaking = False
        self.ep.modify(c.sock.fileno(), select.EPOLLIN)
        if c.kind == "uac":
            self.flow_up()
            self.send_request(c)
        return True

    # -- UAC -------------------------------------------------------------
    def flow_up(self):
        self.st["flows_connected"] += 1
        if self.st["flows_connected"] == self.a.flows:
            self.st["all_connected_at"] = time.time()
            self.announce()

    def announce(self):
        """--sync: tell the harness all flows are up; it answers with the deadlines on stdin."""
        if self.a.sync and not self.announced:
            self.announced = True
            sys.stdout.write(f"connected {time.time():.6f} {self.st['flows_connected']}\n")
            sys.stdout.flush()

    def on_stdin(self):
        line = os.read(0, 4096).decode().split()
        self.ep.unregister(0)
        self.stdin_open = False
        if len(line) >= 2:
            self.a.warm_end, self.a.meas_end = float(line[0]), float(line[1])
        else:  # the harness went away: stop
            self.a.warm_end = self.a.meas_end = time.time()

    def request(self, c: Conn) -> bytes:
        a = self.a
        c.cseq += 1
        return (
            f"MESSAGE sip:{a.user}@{a.uac_host}:{a.uac_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{a.uac_proto.upper()} 127.0.0.1:{c.lport};branch=z9hG4bK-lg{self.pid}-{c.flow}-{c.cseq};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=lg{self.pid}-{c.flow}\r\n"
            f"To: <sip:{a.user}@{a.uac_host}>\r\n"
            f"Call-ID: lg{self.pid}-{c.flow}@127.0.0.1\r\n"
            f"CSeq: {c.cseq} MESSAGE\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    def send_request(self, c: Conn):
        now = time.time()
        if now >= self.a.meas_end:
            c.done = True
            return
        data = self.request(c)
        c.outstanding = True
        c.sent_t = now
        c.sent_ns = time.perf_counter_ns()
        self.st["sent"] += 1
        if now >= self.a.warm_end:
            self.st["measured_sent"] += 1
        if c.tls:
            self.write(c, data)
        else:
            try:
                c.sock.send(data)
            except OSError as e:  # ECONNREFUSED from an earlier ICMP, ENOBUFS...
                self.st["conn_errors"] += 1
                if len(self.st["errors"]) < 10:
                    self.st["errors"].append(f"udp send: {e}")

    def on_response(self, c: Conn, msg: bytes):
        t_ns = time.perf_counter_ns()
        if not c.outstanding:
            self.st["unexpected"] += 1
            return
        head = msg[: msg.find(CRLF2)]
        low = head.lower()
        i = low.find(b"\r\ncseq:")
        cseq = int(low[i + 7: low.find(b"\r\n", i + 2)].split()[0]) if i >= 0 else -1
        if cseq != c.cseq or not head.startswith(b"SIP/2.0 "):
            self.st["unexpected"] += 1
            return
        code = head[8:11]
        if code == b"100":  # provisional: keep waiting
            return
        c.outstanding = False
        self.st["answered"] += 1
        if code != b"200":
            self.st["non_200"] += 1
            if len(self.st["errors"]) < 10:
                self.st["errors"].append(head.split(b"\r\n")[0].decode(errors="replace"))
        if c.sent_t >= self.a.warm_end:
            self.st["measured_answered"] += 1
            self.rtts.append(t_ns - c.sent_ns)
        self.send_request(c)

    # -- events ----------------------------------------------------------
    def on_readable(self, c: Conn):
        if c.kind == "listen":
            while True:
                try:
                    s, _ = c.sock.accept()
                except BlockingIOError:
                    return
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s = self.server_ctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
                n = Conn(s, "uas", tls=True)
                self.st["uas_conns"] += 1
                self.add(n)
                self.handshake(n)
        if c.handshaking:
            if not self.handshake(c):
                return
        if not c.tls:  # UDP UAC
            while True:
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    self.st["conn_errors"] += 1
                    if len(self.st["errors"]) < 10:
                        self.st["errors"].append(f"udp recv: {e}")
                    return
                self.on_response(c, data)
        eof = False
        while True:
            try:
                data = c.sock.recv(262144)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                break
            except (OSError, ssl.SSLError) as e:
                self.close(c, f"{c.kind} recv: {e}")
                return
            if not data:
                eof = True
                break
            c.inbuf += data
        msgs = frame(c.inbuf)
        if c.kind == "uas":
            replies = []
            for m in msgs:
                self.st["uas_received"] += 1
                r = uas_answer(m, self.tag)
                if r is None:
                    self.st["uas_unexpected"] += 1
                else:
                    replies.append(r)
            if replies:
                self.st["uas_answered"] += len(replies)
                self.write(c, b"".join(replies))
        else:
            for m in msgs:
                self.on_response(c, m)
        if eof:
            if c.kind == "uac" and not c.done:
                self.close(c, "uac: connection closed by peer")
            else:
                self.close(c)

    def run(self):
        a = self.a
        if a.uas:
            proto, host, port = parse_addr(a.uas)
            if proto != "tls":
                raise SystemExit("--uas: only tls (use sipp for a UDP UAS)")
            self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.server_ctx.load_cert_chain(a.cert, a.key)
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((host, port))
            ls.listen(1024)
            ls.setblocking(False)
            self.add(Conn(ls, "listen"))
        if a.ready_file:
            with open(a.ready_file, "w") as f:
                f.write("ready\n")
        a.uac_proto, a.uac_host, a.uac_port = parse_addr(a.uac)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE  # client-side verification is not what we measure
        for flow in range(a.flows):
            if a.uac_proto == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                s.connect((a.uac_host, a.uac_port))
                s.setblocking(False)
                c = Conn(s, "uac")
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(5)
                try:  # loopback: the kernel completes it, whoever accepts later
                    s.connect((a.uac_host, a.uac_port))
                except OSError as e:
                    self.st["conn_errors"] += 1
                    self.st["errors"].append(f"connect: {e}")
                    s.close()
                    continue
                s.setblocking(False)
                s = client_ctx.wrap_socket(s, server_hostname=a.uac_host, do_handshake_on_connect=False)
                c = Conn(s, "uac", tls=True)
            c.flow = flow
            c.lport = s.getsockname()[1]
            self.add(c, select.EPOLLIN | select.EPOLLOUT)
            if a.uac_proto == "udp":
                self.ep.modify(s.fileno(), select.EPOLLIN)
                self.flow_up()
                self.send_request(c)
        uacs = [c for c in self.conns.values() if c.kind == "uac"]
        started = last_check = time.time()
        if a.sync:
            self.ep.register(0, select.EPOLLIN)
            self.stdin_open = True
        while True:
            for fd, ev in self.ep.poll(0.05):
                if fd == 0 and self.stdin_open:
                    self.on_stdin()
                    continue
                c = self.conns.get(fd)
                if c is None:
                    continue
                if ev & select.EPOLLOUT:
                    if c.handshaking:
                        if not self.handshake(c):
                            continue
                    elif c.outbuf or c.want_write:
                        self.flush(c)
                if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    if c.sock.fileno() in self.conns:
                        self.on_readable(c)
            now = time.time()
            if now - last_check >= 0.1:
                last_check = now
                if a.sync and not self.announced and now - started > 30:
                    self.announce()  # some flows never came up: go on with those that did
                for c in uacs:
                    if c.outstanding and now - c.sent_t > TIMEOUT_S:
                        self.st["lost"] += 1
                        c.outstanding = False
                        if c.sock.fileno() in self.conns:
                            self.send_request(c)
                if now >= a.meas_end and not any(c.outstanding for c in uacs if c.sock.fileno() in self.conns):
                    break
                if now >= a.meas_end + TIMEOUT_S + 1.0:
                    break
        for c in uacs:
            if c.outstanding:
                self.st["lost"] += 1
        r = sorted(self.rtts)
        self.st["rtt_us"] = {
            "n": len(r),
            "median": r[len(r) // 2] / 1000 if r else None,
            "p99": r[min(len(r) - 1, int(len(r) * 0.99))] / 1000 if r else None,
            "mean": sum(r) / len(r) / 1000 if r else None,
            "max": r[-1] / 1000 if r else None,
        }
        json.dump(self.st, sys.stdout)
        sys.stdout.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uac", required=True, help="udp:HOST:PORT or tls:HOST:PORT to send to")
    p.add_argument("--user", default="bob", help="user part of the Request-URI")
    p.add_argument("--flows", type=int, default=1)
    p.add_argument("--warm-end", type=float, default=float("inf"), help="epoch seconds: measure from here")
    p.add_argument("--meas-end", type=float, default=float("inf"), help="epoch seconds: stop sending here")
    p.add_argument("--sync", action="store_true",
                   help="print 'connected EPOCH N' once every flow is up (warm-up traffic runs meanwhile), "
                        "then read 'WARM_END MEAS_END' from stdin")
    p.add_argument("--uas", help="tls:HOST:PORT: also run a TLS UAS here")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ready-file", help="written once the UAS listens")
    Gen(p.parse_args()).run()


if __name__ == "__main__":
    main()
