#!/usr/bin/env bash
# bench/proxy/run.sh - what the IMAP proxy adds to a command on loopback:
# one havend with the imap service and the proxy in front of it (the
# account's store is the node's own, reached at listen:imap_port), one
# session direct and one through the proxy, NOOP and a small FETCH timed
# one at a time in alternating blocks, median and p99 of each, and the
# difference (goal: < 0.5 ms median). docs/proxy.md explains the figures.
#
#   bench/proxy/run.sh           5,000 commands per path and command
#   N=20000 bench/proxy/run.sh   more samples
#   KEEP=1                       keep the work folder
#   STRICT=1                     exit 1 when the goal is missed
#   BACKEND_TLS=1                a third path: a second havend whose proxy
#                                reaches the same store over TLS
#                                (proxy_backend_tls = always, trusting the
#                                store's own certificate), timed in the same
#                                alternating blocks; prints what TLS adds
#
# It starts its own havend (throw-away instance on free loopback ports,
# tests/lib/haven_instance.py) and stops it by pid when it ends.
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
[ -x bin/havend ] || make -s all || exit 1
N="${N:-5000}" KEEP="${KEEP:-}" STRICT="${STRICT:-}" BACKEND_TLS="${BACKEND_TLS:-}" python3 - <<'PY'
import os, subprocess, sys
sys.path.insert(0, "tests/lib")
from haven_instance import Instance, free_port
node = Instance(keep=bool(os.environ.get("KEEP")))
tnode = None
try:
    pport = free_port()
    node.set_conf("store_name", "s1")
    node.set_conf("proxy_port", str(pport))
    node.add_user("bench@example.org", "bench-pw-1")
    node.start()
    node.wait_port(pport)
    tls_args = []
    if os.environ.get("BACKEND_TLS"):
        # A proxy-carrying node of its own, whose directory puts the bench
        # account on store s1 at the first node's imap port.
        tnode = Instance(keep=bool(os.environ.get("KEEP")))
        tport = free_port()
        tnode.set_conf("store_name", "t")
        tnode.set_conf("proxy_port", str(tport))
        tnode.set_conf("proxy_backend_tls", "always")
        tnode.set_conf("proxy_backend_ca", os.path.join(node.dir, "node", "tls", "cert.pem"))
        tnode.haven("user", "add", "bench@example.org", "--store", "s1", "--password-stdin",
                    input="bench-pw-1\n")
        tnode.haven("store", "add", "s1", "127.0.0.1:%d" % node.ports["imap"])
        tnode.start()
        tnode.wait_port(tport)
        tls_args = [str(tport)]
    c = node.imap("bench@example.org", "bench-pw-1")
    c.append("INBOX", None, None, b"From: a@example.org\r\nTo: bench@example.org\r\n"
             b"Subject: small\r\n\r\n" + b"x" * 1000 + b"\r\n")
    c.logout()
    out = subprocess.run([sys.executable, "bench/proxy/proxy_latency.py", "127.0.0.1",
                          str(node.ports["imap"]), str(pport), "bench@example.org",
                          "bench-pw-1", os.environ["N"]] + tls_args, capture_output=True,
                         text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        sys.exit(1)
    if tls_args:
        # The figures mean something only if the relay really ran over TLS.
        with open(os.path.join(tnode.dir, "havend.log")) as f:
            if "backend_tls=1" not in f.read():
                sys.exit("the TLS proxy's login did not go over TLS (no backend_tls=1 in its log)")
    if os.environ.get("STRICT") and "MISS" in out.stdout:
        sys.exit(1)
finally:
    if os.environ.get("KEEP"):
        print("kept in", node.dir, tnode.dir if tnode else "")
    if tnode:
        tnode.close()
    node.close()
PY
