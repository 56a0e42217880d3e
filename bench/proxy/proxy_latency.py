#!/usr/bin/env python3
"""Per-command latency, direct to the imap service and through the proxy,
in the same run: one session each, commands sent one at a time (send, wait
for the tagged reply), timed around the round trip. Blocks of each path
alternate so that drift of the machine hits both alike.

    proxy_latency.py HOST DIRECT_PORT PROXY_PORT USER PASSWORD [N [PROXY_TLS_PORT]]

PROXY_TLS_PORT: a second proxy in front of the same store that reaches it
over TLS (proxy_backend_tls = always); its blocks alternate with the
others too.

Prints a table: median and p99 (microseconds) per path and command, and
what the proxy adds (its median minus the direct median); with a TLS
proxy also what it adds, and what TLS adds over the clear-text proxy."""
import socket
import sys
import time


class Session:
    def __init__(self, host, port, user, password):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.n = 0
        self.line()  # greeting
        self.cmd("LOGIN %s %s" % (user, password))
        self.cmd("SELECT INBOX")

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise RuntimeError("connection closed")
            self.buf += d
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def cmd(self, text):
        """Sends one command, reads through its tagged reply (literals are
        small here and end with their line); returns seconds taken."""
        self.n += 1
        tag = b"b%d" % self.n
        t0 = time.perf_counter()
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        while True:
            ln = self.line()
            if ln.endswith(b"}"):  # a literal: its bytes, then the rest of the line
                size = int(ln[ln.rindex(b"{") + 1:-1])
                while len(self.buf) < size:
                    d = self.s.recv(65536)
                    if not d:
                        raise RuntimeError("connection closed")
                    self.buf += d
                self.buf = self.buf[size:]
                continue
            if ln.startswith(tag + b" "):
                if not ln[len(tag) + 1:].startswith(b"OK"):
                    raise RuntimeError(ln.decode(errors="replace"))
                return time.perf_counter() - t0


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def main():
    host, dport, pport, user, pw = sys.argv[1:6]
    n = int(sys.argv[6]) if len(sys.argv) > 6 else 5000
    paths = {"direct": Session(host, int(dport), user, pw),
             "proxy": Session(host, int(pport), user, pw)}
    if len(sys.argv) > 7:
        paths["proxytls"] = Session(host, int(sys.argv[7]), user, pw)
    cmds = {"NOOP": "NOOP", "FETCH": "FETCH 1 (FLAGS BODY.PEEK[])"}
    res = {(p, c): [] for p in paths for c in cmds}
    block = 100
    for p in paths:  # warm up
        for c in cmds.values():
            for _ in range(200):
                paths[p].cmd(c)
    for _ in range(max(1, n // block)):
        for p, s in paths.items():
            for c, text in cmds.items():
                for _ in range(block):
                    res[(p, c)].append(s.cmd(text))
    print("%-6s %-8s %8s %10s %8s" % ("cmd", "path", "samples", "median_us", "p99_us"))
    for c in cmds:
        for p in paths:
            v = res[(p, c)]
            print("%-6s %-8s %8d %10.1f %8.1f" % (c, p, len(v), pct(v, 0.5) * 1e6,
                                                   pct(v, 0.99) * 1e6))
    worst = 0.0
    for c in cmds:
        add = (pct(res[("proxy", c)], 0.5) - pct(res[("direct", c)], 0.5)) * 1e6
        add99 = (pct(res[("proxy", c)], 0.99) - pct(res[("direct", c)], 0.99)) * 1e6
        worst = max(worst, add)
        print("added by the proxy, %s: median %+.1f us, p99 %+.1f us" % (c, add, add99))
    for c in cmds if "proxytls" in paths else ():
        add = (pct(res[("proxytls", c)], 0.5) - pct(res[("direct", c)], 0.5)) * 1e6
        add99 = (pct(res[("proxytls", c)], 0.99) - pct(res[("direct", c)], 0.99)) * 1e6
        tls = (pct(res[("proxytls", c)], 0.5) - pct(res[("proxy", c)], 0.5)) * 1e6
        worst = max(worst, add)
        print("added by the proxy with TLS to the store, %s: median %+.1f us, p99 %+.1f us "
              "(TLS alone: median %+.1f us)" % (c, add, add99, tls))
    print("goal: proxy adds < 500 us median: %s (worst %.1f us)" %
          ("PASS" if worst < 500 else "MISS", worst))


if __name__ == "__main__":
    main()
