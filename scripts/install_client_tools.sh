#!/usr/bin/env bash
# Installs, from npm into project-local folders, what the client checks need (issue 16):
#   .tools/buf                       pinned buf (@bufbuild/buf) for `buf lint` / `buf breaking`
#   clients/examples/node/node_modules  the TypeScript example's pinned dependencies (tsc, grpc-js)
# Idempotent (nothing to do when the pinned versions are there). Never fails the build: without
# node/npm, or when the registry cannot be reached, it says so and exits 0, and the tests that
# need these tools are skipped with that reason (tests/unit/test_buf.py, test_client_examples.py).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUF_VERSION="1.75.0"
BUF_DIR="$ROOT/.tools/buf"
NODE_EXAMPLE="$ROOT/clients/examples/node"

if ! command -v npm >/dev/null 2>&1; then
    echo "install_client_tools: npm not found; buf lint and the TypeScript example check will be skipped" \
         "(install Node.js 20+ with npm to run them)" >&2
    exit 0
fi

if [ "$("$BUF_DIR/node_modules/.bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    echo "install_client_tools: installing buf $BUF_VERSION from npm into .tools/buf" >&2
    npm install --prefix "$BUF_DIR" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION" >&2 \
        || echo "install_client_tools: npm could not install buf; buf checks will be skipped" >&2
fi

# npm ci installs exactly package-lock.json; the stamp skips it when the lock has not changed.
STAMP="$NODE_EXAMPLE/node_modules/.ragrail-lock"
if ! cmp -s "$NODE_EXAMPLE/package-lock.json" "$STAMP" 2>/dev/null; then
    echo "install_client_tools: installing the TypeScript example's dependencies (npm ci)" >&2
    if (cd "$NODE_EXAMPLE" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        cp "$NODE_EXAMPLE/package-lock.json" "$STAMP"
    else
        echo "install_client_tools: npm ci failed; the TypeScript example check will be skipped" >&2
    fi
fi
exit 0
