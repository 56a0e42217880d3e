#!/usr/bin/env bash
# test_imap_imapflow.sh - Haven's IMAP server driven by imapflow (npm), a
# client nobody here wrote: STARTTLS, implicit TLS and clear text from
# loopback; list, mailboxCreate/Open, append, fetch (envelope,
# bodyStructure, source), download, flags, search, move/copy/delete, IDLE
# notifications from a second client, CONDSTORE/QRESYNC, logout. The steps
# are in tests/node/imapflow_test.js; this script installs the pinned npm
# packages (tests/node/package-lock.json) when they are missing, starts a
# throw-away havend and runs it. KEEP=1 keeps the instance.
set -eu
cd "$(dirname "$0")/../.."
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
[ -x bin/havend ] || { echo "FAIL: bin/havend is not built (run make)" >&2; exit 1; }
if [ ! -d tests/node/node_modules/imapflow ]; then
    echo "== npm ci in tests/node"
    (cd tests/node && npm ci --no-audit --no-fund) || { echo "FAIL: npm ci in tests/node failed" >&2; exit 1; }
fi
exec python3 - <<'PY'
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tests", "lib"))
from haven_instance import Instance  # noqa: E402

node = Instance(keep=bool(os.environ.get("KEEP")))
ok = False
try:
    user, password = "flow@example.org", "fl0w-pw"
    node.add_user(user, password)
    node.start()
    node.wait_port(node.ports["imaps"])
    env = dict(os.environ, HAVEN_IMAP_PORT=str(node.ports["imap"]),
               HAVEN_IMAPS_PORT=str(node.ports["imaps"]), HAVEN_USER=user, HAVEN_PASS=password)
    # The script has its own waits (30 s per event); this bounds a hang.
    p = subprocess.run(["node", os.path.join("tests", "node", "imapflow_test.js")], env=env,
                       stdin=subprocess.DEVNULL, timeout=300)
    ok = p.returncode == 0
finally:
    if not ok:
        print("havend log:\n" + node.read_log())
        node.keep = True
        print("instance kept in", node.dir)
    node.close()
sys.exit(0 if ok else 1)
PY
