#!/usr/bin/env bash
# Make sure Debian's PostgreSQL server binaries are on this machine: the ledger's contract tests
# start a throw-away server from them. Installs the `postgresql` package when it is missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
echo "PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
# The tests start their own cluster; the package's default one is not needed.
$SUDO service postgresql stop >/dev/null 2>&1 || true
