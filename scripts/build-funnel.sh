#!/usr/bin/env bash
# Build (or reuse) the Funnel TES server used by the integration tests.
#
# Usage: scripts/build-funnel.sh [BIN_DIR]
#   BIN_DIR         where the `funnel` binary goes (else $FUNNEL_BIN_DIR,
#                   else "$(go env GOPATH)/bin")
#   FUNNEL_VERSION  module version to build (default v0.12.2)
#
# Idempotent: if BIN_DIR/funnel already reports the wanted version, nothing is
# built. The only output on stdout is the absolute path of the binary; build
# chatter goes to stderr.
#
# Why not simply `go install github.com/ohsu-comp-bio/funnel@VERSION`?  That
# form also asks the module proxy for the module's version *list* (to look for
# deprecation notices), and some proxies/mirrors answer that request with 403
# even though they serve the version itself. So the module is fetched with
# `go mod download MOD@VERSION` (version-specific requests only) and installed
# from its extracted source directory, which honours Funnel's own go.mod/go.sum.
set -euo pipefail

FUNNEL_MODULE="github.com/ohsu-comp-bio/funnel"
FUNNEL_VERSION="${FUNNEL_VERSION:-v0.12.2}"
want="${FUNNEL_VERSION#v}"

command -v go >/dev/null 2>&1 || { echo "build-funnel: the Go toolchain (go) is required" >&2; exit 2; }

bin_dir="${1:-${FUNNEL_BIN_DIR:-}}"
if [[ -z "$bin_dir" ]]; then
  bin_dir="$(go env GOPATH | cut -d: -f1)/bin"
fi
mkdir -p "$bin_dir"
bin_dir="$(cd "$bin_dir" && pwd -P)"
bin="$bin_dir/funnel"

installed_version() {
  # `funnel version` prints a table whose last line is "version      → X".
  [[ -x "$bin" ]] || return 0
  "$bin" version 2>/dev/null | awk '/^version/ {print $NF}' || true
}

if [[ "$(installed_version)" == "$want" ]]; then
  echo "$bin"
  exit 0
fi

echo "build-funnel: building $FUNNEL_MODULE@$FUNNEL_VERSION into $bin_dir (takes minutes on a fresh machine)" >&2

if ! dl_json="$(go mod download -json "$FUNNEL_MODULE@$FUNNEL_VERSION")"; then
  echo "build-funnel: could not download $FUNNEL_MODULE@$FUNNEL_VERSION:" >&2
  echo "$dl_json" >&2
  exit 1
fi
src_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl_json")"
if [[ -z "$src_dir" || ! -f "$src_dir/go.mod" ]]; then
  echo "build-funnel: no source directory for $FUNNEL_MODULE@$FUNNEL_VERSION in:" >&2
  echo "$dl_json" >&2
  exit 1
fi

(
  cd "$src_dir"
  # Never let a GOFLAGS=-mod=... from the environment rewrite the (read-only)
  # module cache copy; -buildvcs=false because the cache has no VCS metadata.
  GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 GOBIN="$bin_dir" \
    go install -trimpath \
      -ldflags "-X $FUNNEL_MODULE/version.Version=$want" \
      .
) >&2

got="$(installed_version)"
if [[ "$got" != "$want" ]]; then
  echo "build-funnel: built binary reports version '$got', expected '$want'" >&2
  exit 1
fi
echo "$bin"
