#!/usr/bin/env bash
# Installs the Debian 12 packages Haven needs to build and test, when they
# are missing. Run by `make run` and `make test`; does nothing when all are
# present. Uses sudo when not root.
set -eu
pkgs=(
  build-essential   # the C compiler and make
  libssl-dev        # OpenSSL: TLS, SHA-256
  libsqlite3-dev    # SQLite: the single-node directory
  libpq-dev         # libpq: the PostgreSQL directory (several nodes)
  postgresql        # initdb/pg_ctl for the throwaway server test_dir_pg.sh runs the
                    # directory tests on; the install starts no service (policy-rc.d below)
  libcrypt-dev      # libcrypt: yescrypt password hashes
  libevent-dev      # libevent: the event loop of the network services
  clang             # libFuzzer targets (make fuzz)
  python3           # integration tests drive the binaries from Python
  isync             # mbsync: the two-way sync test (test_imap_mbsync.sh)
  curl              # curl's IMAP one-liners (test_imap_curl.sh)
  nodejs            # runs imapflow, the npm IMAP client (test_imap_imapflow.sh)
  npm               # installs imapflow and nodemailer from tests/node/package-lock.json
  swaks             # the SMTP swiss army knife (test_smtp_swaks.sh)
  libnet-ssleay-perl # swaks' TLS (--tls, --tlsc)
  postfix           # smtp-source (SMTP load for tests and bench/smtp) and the
                    # Postfix that bench/smtp compares against; installed
                    # unconfigured, never started as a system MTA (below)
)
# These count as present when their command is on PATH even without the
# Debian package: Node.js from another source (NodeSource's nodejs, which
# bundles npm and conflicts with Debian's npm package) must not make us
# install Debian's over it.
declare -A command_of=([isync]=mbsync [curl]=curl [nodejs]=node [npm]=npm)
# Another MTA package (exim4, sendmail, ...) conflicts with postfix: apt
# would remove it. Never do that behind the operator's back.
other_mta() {
  dpkg-query -W -f='${Package} ${Status}\n' exim4-daemon-light exim4-daemon-heavy \
    sendmail-bin opensmtpd courier-mta nullmailer ssmtp dma msmtp-mta esmtp-run 2>/dev/null |
    awk '/ok installed/ {print $1}' | head -1
}
missing=()
for p in "${pkgs[@]%% *}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && continue
  [ -n "${command_of[$p]:-}" ] && command -v "${command_of[$p]}" >/dev/null && continue
  if [ "$p" = postfix ] && mta=$(other_mta) && [ -n "$mta" ]; then
    echo "deps.sh: not installing postfix: it would replace the installed MTA $mta;" \
         "the SMTP load tests and bench/smtp need postfix's smtp-source" >&2
    continue
  fi
  missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# postfix: "No configuration" leaves /etc/postfix/main.cf unwritten, so the
# package configures no system MTA and its service cannot start. Haven's
# tests and bench run their own postfix instances with their own config.
if printf '%s\n' "${missing[@]}" | grep -qx postfix; then
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
fi
# Package scripts must not start services: policy-rc.d answering 101 is
# Debian's way to say so. Only a policy file made here is removed again.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
rc=0
$SUDO apt-get update -qq || rc=$?
[ "$rc" -eq 0 ] && { $SUDO apt-get install -y -qq "${missing[@]}" || rc=$?; }
[ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit "$rc"
