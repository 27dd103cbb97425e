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

# One field (GoMod, Dir) of `go mod download -json MODULE@VERSION`, run in
# directory $1 (whose go.mod, if any, decides nothing here: the download is by
# exact version); fails naming the module when the answer has no such field.
mod_field() {
    local dir=$1 mv=$2 field=$3 value
    value=$(cd "$dir" && go mod download -json "$mv" | sed -n "s/.*\"$field\": \"\(.*\)\".*/\1/p")
    [ -n "$value" ] || { echo "error: go mod download $mv gave no $field" >&2; return 1; }
    echo "$value"
}

go_peer() {
    local name=$1 spec=$2 pkg="${2%@*}" start tmp ldflags="" stamp
    # crictl says "version unknown" unless its release version is linked in.
    case "$pkg" in
        sigs.k8s.io/cri-tools/*) ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=${spec##*@}" ;;
    esac
    stamp="$spec${ldflags:+ $ldflags}"
    if [ -x "$TOOLS_DIR/bin/$name" ] && stamped "$name" "$stamp"; then
        printf '    %-15s %s (cached)\n' "$name" "$spec"; return
    fi
    command -v go >/dev/null 2>&1 || { echo "error: go not found (Go 1.26 builds the Go test peers)" >&2; exit 1; }
    start=$(date +%s); tmp=$(mktemp -d)
    GOBIN="$tmp" go install -ldflags "$ldflags" "$spec"
    mv "$tmp/$(basename "$pkg")" "$TOOLS_DIR/bin/$name"; rmdir "$tmp"
    echo "$stamp" > "$TOOLS_DIR/stamps/$name"
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

# Kubernetes' commands live in k8s.io/kubernetes, whose go.mod points its
# k8s.io/* staging modules at directories of its own repository, so `go
# install ...@version` refuses it. A small tools module per version requires
# it and replaces every staging module with its published v0.x twin (the
# list read from Kubernetes' own go.mod), then `go build`s the command.
k8s_peer() {
    local name=$1 spec=$2 pkg="${2%@*}" version="${2##*@}" start mod gomod
    if [ -x "$TOOLS_DIR/bin/$name" ] && stamped "$name" "$spec" &&
        { "$TOOLS_DIR/bin/$name" --version 2>/dev/null || "$TOOLS_DIR/bin/$name" version --client 2>/dev/null; } | grep -q "$version"; then
        printf '    %-15s %s (cached)\n' "$name" "$spec"; return
    fi
    command -v go >/dev/null 2>&1 || { echo "error: go not found (Go 1.26 builds the Go test peers)" >&2; exit 1; }
    start=$(date +%s)
    mod="$TOOLS_DIR/k8s-$version"
    if [ ! -f "$mod/go.sum" ]; then
        mkdir -p "$mod"
        gomod=$(mod_field "$mod" "k8s.io/kubernetes@$version" GoMod) || exit 1
        {
            echo "module berth.dev/test-peers/kubernetes"
            echo
            echo "go 1.24"
            echo
            echo "require k8s.io/kubernetes $version"
            sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | sort -u |
                while read -r m; do echo "replace $m => $m v0.${version#v1.}"; done
        } > "$mod/go.mod"
        # Every Kubernetes command of the list, so one tidy resolves them all.
        {
            printf '//go:build tools\n\npackage tools\n\nimport (\n'
            awk '$2 == "k8s" { sub(/@.*/, "", $3); printf "\t_ \"%s\"\n", $3 }' "$LIST"
            printf ')\n'
        } > "$mod/tools.go"
        (cd "$mod" && go mod tidy >/dev/null)
    fi
    # The version the binaries report (and the API server's emulated
    # version derives from) is set at link time, as Kubernetes' release
    # build does; without it they say v0.0.0-master.
    # -s -w: no symbol table or DWARF (as Kubernetes' release build links),
    # which makes linking these large commands much quicker.
    local minor="${version#v1.}" ldflags="-s -w" p
    minor="${minor%%.*}"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    (cd "$mod" && go build -ldflags "$ldflags" -o "$TOOLS_DIR/bin/$name" "$pkg")
    echo "$spec" > "$TOOLS_DIR/stamps/$name"
    printf '    %-15s %s (built in %ss)\n' "$name" "$spec" "$(( $(date +%s) - start ))"
}

# Modules whose go.mod has `replace` lines (the kubernetes-csi sidecars):
# `go install ...@version` refuses them. All of them are built in one tools
# module that requires every one at its pinned version and carries the union
# of their replace lines, so they share one resolved set of dependencies and
# one compile of it (each built on its own resolves slightly different
# golang.org/x, grpc and otel versions, which recompiles everything above
# them: about 20 minutes for the five on a fresh 2-core machine, against
# 4 measured for one shared graph). The module is made from the whole list,
# whatever BERTH_TOOLS selects, so a subset builds the same binaries. spec is
# module@version:package-dir; the version is linked in as the sidecars'
# release builds do (main.version).
src_specs=()
src_names=()
src_peers() {
    local i name spec mv sub start mod key gomod line m gover
    local pending=()
    for i in "${!src_names[@]}"; do
        name=${src_names[$i]} spec=${src_specs[$i]}
        if [ -n "$want" ] && [[ ",$want," != *",$name,"* ]]; then continue; fi
        if [ -x "$TOOLS_DIR/bin/$name" ] && stamped "$name" "$spec"; then
            printf '    %-15s %s (cached)\n' "$name" "$spec"
        else
            pending+=("$i")
        fi
    done
    [ "${#pending[@]}" -gt 0 ] || return 0
    command -v go >/dev/null 2>&1 || { echo "error: go not found (Go 1.26 builds the Go test peers)" >&2; exit 1; }
    key=$(printf '%s\n' "${src_specs[@]}" | sha256sum | cut -c1-12)
    mod="$TOOLS_DIR/sidecars-$key"
    if [ ! -f "$mod/go.sum" ]; then
        rm -rf "$mod.tmp"; mkdir -p "$mod.tmp"
        local requires=() replaces=() gos=()
        for spec in "${src_specs[@]}"; do
            mv="${spec%%:*}"
            requires+=("${mv%@*} ${mv##*@}")
            gomod=$(mod_field "$mod.tmp" "$mv" GoMod) || exit 1
            gos+=("$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")")
            # Replace lines, single or in a block, without local paths: a
            # `m => ./dir` names a nested module, which is required from the
            # proxy at the same version instead.
            while read -r line; do
                case "$line" in
                    *' => ./'*|*' => ../'*)
                        m=${line%% *}; requires+=("$m ${mv##*@}") ;;
                    *' => '*) replaces+=("$line") ;;
                esac
            done < <(awk '/^replace \(/ {b=1; next} b && /^\)/ {b=0; next}
                          b {print; next} /^replace / {sub(/^replace /, ""); print}' "$gomod" |
                     sed 's#//.*##; s/^\s*//; s/\s*$//' | grep ' => ')
        done
        # Two sidecars replacing one module differently cannot share a build.
        m=$(printf '%s\n' "${replaces[@]}" | sort -u | awk '{print $1}' | uniq -d)
        [ -z "$m" ] || { echo "error: the sidecars replace $m differently; they cannot share one module" >&2; exit 1; }
        gover=$(printf '%s\n' "${gos[@]}" | sort -V | tail -1)
        {
            echo "module berth.dev/test-peers/sidecars"
            echo
            echo "go ${gover:-1.26.0}"
            echo
            printf 'require %s\n' "${requires[@]}" | sort -u
            echo
            printf 'replace %s\n' "${replaces[@]}" | sort -u
        } > "$mod.tmp/go.mod"
        {
            printf '//go:build tools\n\npackage tools\n\nimport (\n'
            for spec in "${src_specs[@]}"; do
                mv="${spec%%:*}"; printf '\t_ "%s/%s"\n' "${mv%@*}" "${spec#*:}"
            done
            printf ')\n'
        } > "$mod.tmp/tools.go"
        (cd "$mod.tmp" && go mod tidy >/dev/null)
        rm -rf "$mod"; mv "$mod.tmp" "$mod"
    fi
    for i in "${pending[@]}"; do
        name=${src_names[$i]} spec=${src_specs[$i]}
        mv="${spec%%:*}" sub="${spec#*:}"
        start=$(date +%s)
        (cd "$mod" && go build -ldflags "-s -w -X main.version=${mv##*@}" -o "$TOOLS_DIR/bin/$name" "${mv%@*}/$sub")
        echo "$spec" > "$TOOLS_DIR/stamps/$name"
        printf '    %-15s %s (built in %ss, shared module %s)\n' "$name" "$spec" "$(( $(date +%s) - start ))" "${mod##*/}"
    done
}

# A writable copy of a module's source under $TOOLS_DIR/src (made once).
module_dir() {
    local mv=$1 dir src
    src="$TOOLS_DIR/src/$(echo "$mv" | tr '/@' '__')"
    if [ ! -f "$src/go.mod" ]; then
        dir=$(mod_field "$TOOLS_DIR" "$mv" Dir) || exit 1
        rm -rf "$src.tmp"; mkdir -p "$TOOLS_DIR/src"
        cp -r "$dir" "$src.tmp"; chmod -R u+w "$src.tmp"
        # A module zip leaves out nested modules, which a `replace m =>
        # ./dir` line of the main module then misses (external-snapshotter's
        # client/v8): each is put back from its own release of the same
        # version.
        local m rel nested
        sed -n 's#^\(replace\)\{0,1\}\s*\(\S*\)\( v\S*\)\{0,1\} => \./\(\S*\)\s*$#\2 \4#p' "$src.tmp/go.mod" |
            while read -r m rel; do
                [ -e "$src.tmp/$rel/go.mod" ] && continue
                nested=$(mod_field "$TOOLS_DIR" "$m@${mv##*@}" Dir) || exit 1
                rm -rf "${src:?}.tmp/$rel"; cp -r "$nested" "$src.tmp/$rel"; chmod -R u+w "$src.tmp/$rel"
            done
        mv "$src.tmp" "$src"
    fi
    echo "$src"
}

# Files a module ships (the VolumeSnapshot CRDs): module@version:dir copied
# to $TOOLS_DIR/files/<name>.
files_peer() {
    local name=$1 mv="${2%%:*}" sub="${2#*:}" src
    if [ -d "$TOOLS_DIR/files/$name" ] && stamped "$name" "$2"; then
        printf '    %-15s %s (cached)\n' "$name" "$2"; return
    fi
    command -v go >/dev/null 2>&1 || { echo "error: go not found (the module proxy serves these files)" >&2; exit 1; }
    src=$(module_dir "$mv")
    [ -d "$src/$sub" ] || { echo "error: $mv has no $sub" >&2; exit 1; }
    rm -rf "$TOOLS_DIR/files/$name"; mkdir -p "$TOOLS_DIR/files"
    cp -r "$src/$sub" "$TOOLS_DIR/files/$name"
    echo "$2" > "$TOOLS_DIR/stamps/$name"
    printf '    %-15s %s (%s files)\n' "$name" "$2" "$(ls "$TOOLS_DIR/files/$name" | wc -l)"
}

while read -r name kind spec; do
    case "$name" in ''|'#'*) continue ;; esac
    # Every sidecar goes into their shared module; src_peers picks the wanted.
    if [ "$kind" = src ]; then src_names+=("$name"); src_specs+=("$spec"); continue; fi
    if [ -n "$want" ] && [[ ",$want," != *",$name,"* ]]; then continue; fi
    case "$kind" in
        go) go_peer "$name" "$spec" ;;
        pip) pip_peer "$name" "$spec" ;;
        k8s) k8s_peer "$name" "$spec" ;;
        files) files_peer "$name" "$spec" ;;
        *) echo "error: $LIST: unknown kind $kind for $name" >&2; exit 1 ;;
    esac
done < "$LIST"
src_peers
