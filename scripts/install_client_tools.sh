#!/usr/bin/env bash
# Installs, from npm into project-local folders, what the client checks need (issue 16):
#   .tools/buf                       pinned buf (@bufbuild/buf) for `buf lint` / `buf breaking`
#   clients/examples/node/node_modules  the TypeScript example's pinned dependencies (tsc, grpc-js)
# and, from Debian's packages, what the Go example's offline build needs
# (clients/examples/go/build_offline.sh): Go, grpc-go and protobuf-go as source, protoc and the
# two Go plugins. Idempotent (nothing to do when the pinned versions / the packages are there).
# Never fails the build: without node/npm or apt, or when a registry cannot be reached, it says
# so and exits 0, and the tests that need these tools are skipped with that reason
# (tests/unit/test_buf.py, test_client_examples.py).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUF_VERSION="1.75.0"
BUF_DIR="$ROOT/.tools/buf"
NODE_EXAMPLE="$ROOT/clients/examples/node"

# Go example (about 20 s and 580 MB, mostly Go itself, the first time). CI reaches no Go module proxy, so go.mod's
# modules cannot be fetched; Debian packages grpc-go 1.33 and protobuf-go 1.28 as source under
# /usr/share/gocode, which build_offline.sh builds in GOPATH mode. protobuf 1-5 rather than the
# 1-3 that apt would pick for grpc: it is the one built on protobuf-go's APIv2, as the stubs are.
GO_PACKAGES="golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc"
command -v go >/dev/null 2>&1 || GO_PACKAGES="golang-go $GO_PACKAGES"
go_ready() {
    [ -d /usr/share/gocode/src/google.golang.org/grpc ] && [ -d /usr/share/gocode/src/google.golang.org/protobuf ] \
        && command -v go >/dev/null 2>&1 && command -v protoc >/dev/null 2>&1 \
        && command -v protoc-gen-go >/dev/null 2>&1 && command -v protoc-gen-go-grpc >/dev/null 2>&1
}
if ! go_ready; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "install_client_tools: installing Debian's Go packages for the Go example's offline build" >&2
        # shellcheck disable=SC2086  # a list of package names
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
               && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $GO_PACKAGES >/dev/null; }; then
            echo "install_client_tools: apt-get could not install $GO_PACKAGES; the Go example will not be compiled" >&2
        fi
    else
        echo "install_client_tools: no apt-get as root; the Go example will not be compiled here" \
             "(apt-get install $GO_PACKAGES, or build it as clients/examples/go/README.md says)" >&2
    fi
fi

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
