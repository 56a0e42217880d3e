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
)
missing=()
for p in "${pkgs[@]%% *}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
