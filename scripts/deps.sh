#!/usr/bin/env bash
# Installs the Debian 12 packages Haven needs to build and test, when they
# are missing. Run by `make run` and `make test`; does nothing when all are
# present. Uses sudo when not root.
set -eu
pkgs=(
  build-essential   # the C compiler and make
  libssl-dev        # OpenSSL: TLS, SHA-256
  libsqlite3-dev    # SQLite: the single-node directory
  libcrypt-dev      # libcrypt: yescrypt password hashes
  libevent-dev      # libevent: the event loop of the network services
  clang             # libFuzzer targets (make fuzz)
  python3           # integration tests drive the binaries from Python
  isync             # mbsync: the two-way sync test (test_imap_mbsync.sh)
  curl              # curl's IMAP one-liners (test_imap_curl.sh)
  nodejs            # runs imapflow, the npm IMAP client (test_imap_imapflow.sh)
  npm               # installs imapflow from tests/node/package-lock.json
)
# These count as present when their command is on PATH even without the
# Debian package: Node.js from another source (NodeSource's nodejs, which
# bundles npm and conflicts with Debian's npm package) must not make us
# install Debian's over it.
declare -A command_of=([isync]=mbsync [curl]=curl [nodejs]=node [npm]=npm)
missing=()
for p in "${pkgs[@]%% *}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && continue
  [ -n "${command_of[$p]:-}" ] && command -v "${command_of[$p]}" >/dev/null && continue
  missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
