#!/usr/bin/env bash
# Installs the test peers pinned in tests/tools/versions.txt under
# $BERTH_TOOLS_DIR (default /var/cache/berth-tools): Go tools built with
# `go install` (GOPATH and GOCACHE there too) into bin/, Python packages with
# pip into venv/. A second run reuses what is there: each entry is stamped
# with its pinned version. Prints every peer's version. BERTH_TOOLS=a,b
# limits the run to some names.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${BERTH_TOOLS_DIR:-/var/cache/berth-tools}"
LIST="$ROOT/tests/tools/versions.txt"
export GOPATH="${GOPATH:-$TOOLS_DIR/gopath}"
export GOCACHE="${GOCACHE:-$TOOLS_DIR/gocache}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED="${CGO_ENABLED:-0}"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
mkdir -p "$TOOLS_DIR/bin" "$TOOLS_DIR/stamps"
want="${BERTH_TOOLS:-}"
echo "==> test peers (tests/tools/versions.txt) in $TOOLS_DIR"

stamped() { [ "$(cat "$TOOLS_DIR/stamps/$1" 2>/dev/null)" = "$2" ]; }

go_peer() {
    local name=$1 spec=$2 pkg="${2%@*}" start tmp
    if [ -x "$TOOLS_DIR/bin/$name" ] && stamped "$name" "$spec"; then
        printf '    %-15s %s (cached)\n' "$name" "$spec"; return
    fi
    command -v go >/dev/null 2>&1 || { echo "error: go not found (Go 1.26 builds the Go test peers)" >&2; exit 1; }
    start=$(date +%s); tmp=$(mktemp -d)
    GOBIN="$tmp" go install "$spec"
    mv "$tmp/$(basename "$pkg")" "$TOOLS_DIR/bin/$name"; rmdir "$tmp"
    echo "$spec" > "$TOOLS_DIR/stamps/$name"
    printf '    %-15s %s (built in %ss, %s)\n' "$name" "$spec" "$(( $(date +%s) - start ))" "$(go version | awk '{print $3}')"
}

pip_peer() {
    local name=$1 req=$2 py="$TOOLS_DIR/venv/bin/python"
    if [ -x "$py" ] && stamped "$name" "$req"; then
        printf '    %-15s %s (cached)\n' "$name" "$req"; return
    fi
    [ -x "$py" ] || python3 -m venv "$TOOLS_DIR/venv"
    "$py" -m pip install --quiet --disable-pip-version-check "$req"
    echo "$req" > "$TOOLS_DIR/stamps/$name"
    printf '    %-15s %s (installed, %s)\n' "$name" "$req" "$("$py" --version)"
}

while read -r name kind spec; do
    case "$name" in ''|'#'*) continue ;; esac
    if [ -n "$want" ] && [[ ",$want," != *",$name,"* ]]; then continue; fi
    case "$kind" in
        go) go_peer "$name" "$spec" ;;
        pip) pip_peer "$name" "$spec" ;;
        *) echo "error: $LIST: unknown kind $kind for $name" >&2; exit 1 ;;
    esac
done < "$LIST"
