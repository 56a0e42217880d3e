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
#
# It starts its own havend (throw-away instance on free loopback ports,
# tests/lib/haven_instance.py) and stops it by pid when it ends.
set -u
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
[ -x bin/havend ] || make -s all || exit 1
N="${N:-5000}" KEEP="${KEEP:-}" STRICT="${STRICT:-}" python3 - <<'PY'
import os, subprocess, sys
sys.path.insert(0, "tests/lib")
from haven_instance import Instance, free_port
node = Instance(keep=bool(os.environ.get("KEEP")))
try:
    pport = free_port()
    node.set_conf("proxy_port", str(pport))
    node.add_user("bench@example.org", "bench-pw-1")
    node.start()
    node.wait_port(pport)
    c = node.imap("bench@example.org", "bench-pw-1")
    c.append("INBOX", None, None, b"From: a@example.org\r\nTo: bench@example.org\r\n"
             b"Subject: small\r\n\r\n" + b"x" * 1000 + b"\r\n")
    c.logout()
    out = subprocess.run([sys.executable, "bench/proxy/proxy_latency.py", "127.0.0.1",
                          str(node.ports["imap"]), str(pport), "bench@example.org",
                          "bench-pw-1", os.environ["N"]], capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        sys.exit(1)
    if os.environ.get("STRICT") and "MISS" in out.stdout:
        sys.exit(1)
finally:
    if os.environ.get("KEEP"):
        print("kept in", node.dir)
    node.close()
PY
