"""
Many raw websocket clients in one process, for bench/bench_fanout.py.

Each client speaks the real Satellite protocol (generation ORIGINAL): the
websocket opening handshake, SatAuthReq, answers the server's
SatInStartReplicationReq, asks for the live stream (lsn "eof"), then for
every SatOpLog it receives acknowledges the commit's LSN with a SatPingResp
and answers pings.  In ``--mode raw`` a client only does the handshake, then
handles the SatOpLog frames the bench's reference server broadcasts (a bare
websocket server, nothing else in between) exactly the same way.

No Twisted, no autobahn: one epoll loop (selectors), frames parsed by hand,
so the client side costs as little CPU as possible on a shared machine.

Talks to the bench on stdout, one line each:
  ready <n>                 every client is streaming (sent once)
  txn <k> <t,t,...>         every client has transaction k (0-based, per client);
                            arrival times, time.monotonic(), one per client
  error <text>              a client failed (closed, refused)
Stops when stdin closes.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electric.satellite import codec  # noqa: E402

G = codec.ORIGINAL
PB = G.pb
T_AUTH_RESP = G.type_byte("SatAuthResp")
T_PING_REQ = G.type_byte("SatPingReq")
T_START_REQ = G.type_byte("SatInStartReplicationReq")
T_START_RESP = G.type_byte("SatInStartReplicationResp")
T_OPLOG = G.type_byte("SatOpLog")
T_ERROR = G.type_byte("SatErrorResp")


def client_frame(payload: bytes) -> bytes:
    """A masked binary websocket frame (mask key 0: the payload goes as is)."""
    n = len(payload)
    if n <= 125:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


START_RESP = client_frame(codec.encode(G, PB.SatInStartReplicationResp()))
START_EOF = client_frame(codec.encode(G, PB.SatInStartReplicationReq(lsn=b"eof")))
PONG = client_frame(codec.encode(G, PB.SatPingResp()))


class Client:
    __slots__ = ("sock", "buf", "state", "count", "ident")

    def __init__(self, sock, ident):
        self.sock = sock
        self.buf = bytearray()
        self.state = "http"
        self.count = 0
        self.ident = ident


class Swarm:
    def __init__(self, port, n, mode, prefix, window):
        self.port, self.n, self.mode, self.prefix, self.window = port, n, mode, prefix, window
        self.sel = selectors.DefaultSelector()
        self.started = 0
        self.handshaking = 0
        self.ready = 0
        self.arrivals = {}  # txn index -> list of times
        self.out = sys.stdout
        self.key = base64.b64encode(os.urandom(16)).decode()

    def say(self, line):
        self.out.write(line + "\n")
        self.out.flush()

    def start_more(self):
        while self.started < self.n and self.handshaking < self.window:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            c = Client(s, f"{self.prefix}-{self.started}")
            self.started += 1
            self.handshaking += 1
            self.sel.register(s, selectors.EVENT_WRITE, c)

    def became_ready(self, c):
        c.state = "live"
        self.handshaking -= 1
        self.ready += 1
        if self.ready == self.n:
            self.say(f"ready {self.n}")
        self.start_more()

    def fail(self, c, why):
        self.say(f"error {c.ident}: {why}")
        try:
            self.sel.unregister(c.sock)
        except Exception:
            pass
        c.sock.close()
        if c.state != "live":
            self.handshaking -= 1
        c.state = "dead"

    def arrived(self, c, now):
        k = c.count
        c.count += 1
        lst = self.arrivals.get(k)
        if lst is None:
            lst = self.arrivals[k] = []
        lst.append(now)
        if len(lst) == self.n:
            del self.arrivals[k]
            self.say(f"txn {k} " + ",".join(f"{t:.6f}" for t in lst))

    def on_writable(self, c):
        # connected: send the opening handshake, then wait for the answer
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return self.fail(c, os.strerror(err))
        c.sock.send(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def on_readable(self, c, now):
        try:
            data = c.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self.fail(c, str(e))
        if not data:
            return self.fail(c, "closed by the server")
        buf = c.buf
        buf += data
        if c.state == "http":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                return self.fail(c, bytes(buf[:end]).decode(errors="replace"))
            del buf[:end + 4]
            if self.mode == "raw":
                self.became_ready(c)
            else:
                c.state = "auth"
                c.sock.send(client_frame(codec.auth_request(G, c.ident, "bench")))
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln = b1 & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = struct.unpack_from("!H", buf, pos + 2)[0]
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = struct.unpack_from("!Q", buf, pos + 2)[0]
                h = 10
            if n - pos < h + ln:
                break
            payload = bytes(buf[pos + h:pos + h + ln])
            pos += h + ln
            op = b0 & 0x0F
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return self.fail(c, f"close {code} {payload[2:].decode(errors='replace')}")
            if op == 9:
                c.sock.send(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
                continue
            if op != 2:
                continue
            self.message(c, payload, now)
        if pos:
            del buf[:pos]

    def message(self, c, payload, now):
        # The raw reference server sends SatOpLog frames too: handled (parsed, acknowledged) alike,
        # so both measurements cost the client process the same.
        t = payload[0]
        if t == T_OPLOG:
            log = PB.SatOpLog.FromString(payload[1:])
            last = log.ops[-1]
            if last.WhichOneof("op") == "commit":
                self.arrived(c, now)
                c.sock.send(client_frame(codec.encode(G, PB.SatPingResp(lsn=last.commit.lsn))))
        elif t == T_PING_REQ:
            c.sock.send(PONG)
        elif t == T_START_REQ:
            c.sock.send(START_RESP + START_EOF)
        elif t == T_START_RESP and c.state == "auth":
            self.became_ready(c)
        elif t == T_ERROR:
            self.fail(c, f"SatErrorResp {PB.SatErrorResp.FromString(payload[1:]).error_type}")

    def run(self):
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        self.start_more()
        while True:
            events = self.sel.select(1.0)
            now = time.monotonic()
            for key, mask in events:
                c = key.data
                if c is None:
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                    continue
                if c.state == "dead":
                    continue
                if mask & selectors.EVENT_WRITE and c.state == "http" and not c.buf:
                    self.on_writable(c)
                elif mask & selectors.EVENT_READ:
                    self.on_readable(c, now)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--mode", choices=("satellite", "raw"), default="satellite")
    p.add_argument("--prefix", default=f"fan{os.getpid()}")
    p.add_argument("--window", type=int, default=200, help="handshakes in flight at once")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.n + 64:
        print(f"error open file limit {hard} is below {a.n} clients", flush=True)
        return 1
    Swarm(a.port, a.n, a.mode, a.prefix, a.window).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
