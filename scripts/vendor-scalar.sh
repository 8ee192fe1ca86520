#!/usr/bin/env bash
# Replaces vendor/scalar-api-reference/standalone.js with the bundle of @scalar/api-reference@<version>.
set -euo pipefail
version="${1:?usage: scripts/vendor-scalar.sh <version>}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "@scalar/api-reference@$version" >/dev/null && tar xzf ./*.tgz)
cp "$tmp/package/dist/browser/standalone.js" "$root/vendor/scalar-api-reference/standalone.js"
sed -i -E "s/@scalar\/api-reference(@| )[0-9][0-9.]*/@scalar\/api-reference\1$version/g" "$root/vendor/scalar-api-reference/README.md" "$root/api/src/modules/docs/index.ts"
echo "vendored @scalar/api-reference@$version"
