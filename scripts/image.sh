#!/usr/bin/env bash
# Build Berth's container image, and images of the CSI sidecars, where no image
# registry can be reached.
#
#   sudo ./scripts/image.sh [--tag TAG] [--archive-dir DIR] [--sidecars]
#
# 1. A minimal Debian bookworm rootfs made with debootstrap (Debian's mirror
#    is the only download), holding the packages the image's tools come from,
#    imported into podman as localhost/berth-base:bookworm. It is cached under
#    $BERTH_IMAGE_CACHE (default /var/cache/berth-image) and made again only
#    when the package list changes.
# 2. The workspace built on this host (cargo build --release; the CNI plugins
#    linked statically, lib.sh's build_static), and the
#    Dockerfile built with
#      --build-arg RUNTIME_IMAGE=localhost/berth-base:bookworm
#      --build-arg BINARIES=prebuilt --build-arg INSTALL_PACKAGES=false
#    into localhost/berth:TAG (default: the workspace version). Elsewhere the
#    same Dockerfile builds from public images with no build argument.
# 3. With --sidecars: each CSI sidecar binary scripts/test-peers.sh built
#    (static Go binaries) in a FROM scratch image,
#    localhost/berth-test/<name>:<version>.
# 4. With --archive-dir: every image also saved as a docker-archive tarball
#    there (`ctr -n k8s.io images import` loads it into containerd).
#
# podman runs with its own storage under the cache directory and chroot
# isolation (the build steps download nothing and join no new network), so nothing is configured in
# the root network namespace and the system's image store is left alone.
source "$(dirname "$0")/lib.sh"
need_root

TAG=""
ARCHIVES=""
SIDECARS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --archive-dir) ARCHIVES="$2"; shift 2 ;;
        --sidecars) SIDECARS=1; shift ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$TAG" ]; then
    TAG="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
fi

CACHE="${BERTH_IMAGE_CACHE:-/var/cache/berth-image}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE="localhost/berth-base:bookworm"
IMAGE="localhost/berth:$TAG"
# The tools the plugins and the driver call at run time.
BASE_PACKAGES="iptables,iproute2,e2fsprogs,xfsprogs,util-linux,ca-certificates"
mkdir -p "$CACHE"

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || {
        echo "image.sh: $tool is missing: apt-get install -y $tool" >&2
        exit 1
    }
done

pm() {
    podman --root "$CACHE/storage" --runroot "$CACHE/run" \
        --cgroup-manager cgroupfs --events-backend file --runtime runc "$@"
}

# 1. The base image.
stamp="$(printf '%s %s' "$BASE_PACKAGES" "$MIRROR" | sha256sum | cut -c1-16)"
base_tar="$CACHE/berth-base-$stamp.tar"
if [ ! -s "$base_tar" ]; then
    rootfs="$CACHE/rootfs-$stamp"
    rm -rf "$rootfs"
    echo "image.sh: debootstrap bookworm ($BASE_PACKAGES) from $MIRROR"
    started=$SECONDS
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$MIRROR" \
        > "$CACHE/debootstrap.log" 2>&1 || {
        echo "image.sh: debootstrap failed; the end of $CACHE/debootstrap.log:" >&2
        tail -20 "$CACHE/debootstrap.log" >&2
        exit 1
    }
    # What an image does not need: package lists, caches, docs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -cf "$base_tar.part" .
    mv "$base_tar.part" "$base_tar"
    rm -rf "$rootfs"
    echo "image.sh: base rootfs made in $((SECONDS - started)) s"
fi
if ! pm image exists "$BASE"; then
    pm import --quiet --change 'CMD ["/bin/bash"]' "$base_tar" "$BASE" >/dev/null
fi

# 2. Berth's image from the host's build.
find_cargo
build_release
ctx="$(mktemp -d /tmp/berth-image-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/prebuilt"
# The CNI plugins statically linked, as the Dockerfile builds them (they run
# on the hosts, with the hosts' C library, if any); the daemons run in the
# image's userland.
plugins_from="$STATIC_DIR"
build_static || {
    echo "image.sh: warning: shipping the dynamic CNI plugins" >&2
    plugins_from="$ROOT/target/release"
}
for b in berth-bridge berth-host-local berth-overlay; do
    cp "$plugins_from/$b" "$ctx/prebuilt/"
done
for b in berth-overlayd berth-csi; do
    cp "$ROOT/target/release/$b" "$ctx/prebuilt/"
done
cp "$ROOT/Dockerfile" "$ctx/Dockerfile"
pm build --isolation chroot --network host \
    --build-arg RUNTIME_IMAGE="$BASE" \
    --build-arg BINARIES=prebuilt \
    --build-arg INSTALL_PACKAGES=false \
    -t "$IMAGE" "$ctx" > "$CACHE/build.log" 2>&1 || {
    echo "image.sh: podman build failed; the end of $CACHE/build.log:" >&2
    tail -30 "$CACHE/build.log" >&2
    exit 1
}
images=("$IMAGE")
echo "image.sh: built $IMAGE ($(pm image inspect --format '{{.Size}}' "$IMAGE") bytes)"

# 3. Sidecar images.
if [ "$SIDECARS" = 1 ]; then
    tools="${BERTH_TOOLS_DIR:-/var/cache/berth-tools}"
    while read -r name kind spec _; do
        case "$name" in ''|'#'*) continue ;; esac
        [ "$kind" = src ] || continue
        version="${spec#*@}"
        version="${version%%:*}"
        bin="$tools/bin/$name"
        [ -x "$bin" ] || { echo "image.sh: $bin missing: run scripts/test-peers.sh" >&2; exit 1; }
        sctx="$ctx/sidecar-$name"
        mkdir -p "$sctx"
        cp "$bin" "$sctx/$name"
        printf 'FROM scratch\nCOPY %s /%s\nUSER 0\nENTRYPOINT ["/%s"]\n' "$name" "$name" "$name" > "$sctx/Dockerfile"
        pm build --isolation chroot --network host -t "localhost/berth-test/$name:$version" "$sctx" \
            >> "$CACHE/build.log" 2>&1
        images+=("localhost/berth-test/$name:$version")
        echo "image.sh: built localhost/berth-test/$name:$version"
    done < "$ROOT/tests/tools/versions.txt"
fi

# 4. Archives.
if [ -n "$ARCHIVES" ]; then
    mkdir -p "$ARCHIVES"
    for img in "${images[@]}"; do
        file="$ARCHIVES/$(echo "${img#localhost/}" | tr '/:' '__').tar"
        rm -f "$file"
        pm save --quiet --format docker-archive -o "$file" "$img" >/dev/null
        echo "image.sh: saved $img to $file"
    done
fi
