#!/usr/bin/env bash
# What the test suite needs from the system, installed from Debian's packages when missing:
# PostgreSQL's server binaries (the ledger's contract tests start a throw-away server) and a
# headless Java runtime (the Spark engine's tests run Spark in local mode); Fashion-MNIST (the
# federated data loader's test reads the real files); a C compiler (installing veil compiles the
# exact sampler's inner loop, and the tests require the compiled loop).
set -euo pipefail
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v java >/dev/null 2>&1; then
  missing+=(default-jre-headless)
fi
if ! command -v cc >/dev/null 2>&1; then
  missing+=(gcc libc6-dev)
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  missing+=(dataset-fashion-mnist)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages the tests need: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
# The tests start their own PostgreSQL cluster; the package's default one is not needed.
$SUDO service postgresql stop >/dev/null 2>&1 || true
