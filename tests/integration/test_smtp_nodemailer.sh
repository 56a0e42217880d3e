#!/usr/bin/env bash
# test_smtp_nodemailer.sh - Haven's submission service driven by nodemailer
# (npm), a client nobody here wrote: STARTTLS + AUTH PLAIN on the
# submission port, implicit TLS + AUTH LOGIN on the submissions port, a
# wrong password and a missing AUTH refused; arrival read back with
# imapflow. The steps are in tests/node/smtp_submit.js; this script installs
# the pinned npm packages (tests/node/package-lock.json) when they are
# missing, starts a throw-away havend and runs it. KEEP=1 keeps the instance.
set -eu
cd "$(dirname "$0")/../.."
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
[ -x bin/havend ] || { echo "FAIL: bin/havend is not built (run make)" >&2; exit 1; }
if [ ! -d tests/node/node_modules/nodemailer ] || [ ! -d tests/node/node_modules/imapflow ]; then
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
    sender, sender_pw = "mailer@example.org", "ma1ler-pw"
    rcpt, rcpt_pw = "reader@example.com", "rea6er-pw"
    node.add_user(sender, sender_pw)
    node.add_user(rcpt, rcpt_pw)
    node.start()
    node.wait_smtp()
    env = dict(os.environ, HAVEN_IMAP_PORT=str(node.ports["imap"]),
               HAVEN_SUBMISSION_PORT=str(node.ports["submission"]),
               HAVEN_SUBMISSIONS_PORT=str(node.ports["submissions"]),
               HAVEN_SENDER=sender, HAVEN_SENDER_PASS=sender_pw,
               HAVEN_RCPT=rcpt, HAVEN_RCPT_PASS=rcpt_pw)
    # The script has its own waits (60 s per arrival); this bounds a hang.
    p = subprocess.run(["node", os.path.join("tests", "node", "smtp_submit.js")], env=env,
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
