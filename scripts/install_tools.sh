#!/usr/bin/env bash
# Installs the tools the chart checks need that pip cannot provide: `promtool`
# (Debian's `prometheus` package), used by tests/chart to check the alert rules, and
# `prometheus` itself, the server `make observe` and tests/integration/test_observe.py run.
# Idempotent: does nothing when both are already on PATH. Never fails the
# build: without root (or without apt) it says what to install and exits 0, and
# the tests that need promtool are skipped with that reason.
set -euo pipefail

# buf and the TypeScript example's dependencies from npm, Debian's Go packages for the Go example
# (issue 16); never fails the build.
bash "$(dirname "$0")/install_client_tools.sh"

# PostgreSQL's server binaries (initdb, postgres) for the feedback store's tests against a real
# server (tests/postgres.py starts a private one per session; nothing is left running). Debian
# puts them under /usr/lib/postgresql/<version>/bin; the tests look there too.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "install_tools: installing Debian's postgresql package for the feedback store tests" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null || \
            echo "install_tools: postgresql install failed; the PostgreSQL tests will skip" >&2
        # The package's postinst may start its own cluster; the tests start their own server.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
            systemctl stop postgresql || true
        fi
    else
        echo "install_tools: PostgreSQL server not found; install Debian's 'postgresql' package" \
             "to run the feedback store's PostgreSQL tests" >&2
    fi
fi

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_tools: promtool not found; install Debian's 'prometheus' package" \
         "(apt-get install --no-install-recommends prometheus) to run the alert-rule checks" >&2
    exit 0
fi
echo "install_tools: installing Debian's prometheus package for promtool" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package's postinst may start a Prometheus server; the checks only need promtool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
fi
command -v promtool >/dev/null 2>&1 || { echo "install_tools: promtool still missing after install" >&2; exit 0; }
promtool --version 2>&1 | head -1 >&2
