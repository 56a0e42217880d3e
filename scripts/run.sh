#!/usr/bin/env bash
# run.sh - what `make run` does after installing packages and building:
# make a demo instance in ./demo (once), with a demo account, and run
# havend in the foreground on it. Ctrl-C stops it; `rm -rf demo` starts over.
set -eu
cd "$(dirname "$0")/.."

conf=demo/haven.conf
if [ ! -f "$conf" ]; then
    # Unprivileged ports, so the demo needs no root.
    bin/haven init demo --imap-port 1143 --smtp-port 2525 --submission-port 1587 \
        --lmtp-port 2424 --http-port 8080
    if ! printf 'demo\n' | bin/haven -c "$conf" user add demo@example.test --password-stdin; then
        echo "run.sh: could not add the demo account; remove demo/ and run 'make run' again" >&2
        exit 1
    fi
fi

cat <<'TEXT'

== Haven demo instance in ./demo ==================================================

  Account:  demo@example.test   password: demo
  IMAP:     localhost port 1143 (plaintext LOGIN allowed from loopback)
  SMTP:     localhost port 2525 (MX), 1587 (submission)

  LMTP:     localhost port 2424 (delivery into the stores, used by the queue)

  Point a mail client at localhost:1143 / 1587 (see README.md), or try
    curl imap://localhost:1143/ --user demo@example.test:demo
    swaks --server localhost:2525 --to demo@example.test     # mail in over SMTP
  From a second terminal:

    bin/haven -c demo/haven.conf status                       # ask this havend
    bin/haven -c demo/haven.conf queue list                   # mail not yet delivered
    bin/haven -c demo/haven.conf import demo@example.test INBOX some.mbox
    bin/haven -c demo/haven.conf verify                       # check every store
    bin/haven --help                                          # everything else

  Starting havend in the foreground (Ctrl-C stops it). Logs follow.
====================================================================================

TEXT
exec bin/havend -c "$conf" -f
