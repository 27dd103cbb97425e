# Every Berth binary in one small image: build with the Rust toolchain, run on
# Debian with the tools the plugins and the driver call (iptables for the
# iptables ipMasq backend; nftables is programmed over netlink, no nft binary;
# mkfs/blkid for volumes).
#
# The base images are build arguments, so the same file builds from public
# images (the defaults) and from local ones where no registry can be reached
# (scripts/image.sh: a debootstrapped Debian as RUNTIME_IMAGE, binaries built
# on the host with BINARIES=prebuilt, packages already in the base with
# INSTALL_PACKAGES=false).
ARG BUILD_IMAGE=docker.io/library/rust:1.89-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
# build: compile in BUILD_IMAGE; prebuilt: take ./prebuilt/* from the context.
ARG BINARIES=build

FROM ${BUILD_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The CNI plugins are copied onto the hosts and exec'd for every pod: linked
# statically they run with any host C library and map no shared libraries;
# linked with musl, each exec skips glibc's CPUID-heavy start-up, which traps
# to the hypervisor on VMs (cni-core/src/alloc.rs). The daemons run here.
# Thin LTO for every shipped binary (the workspace profile leaves it off to
# keep the test build quick; Cargo.toml, [profile.release]).
ENV CARGO_PROFILE_RELEASE_LTO=thin
RUN cargo build --release --workspace --bins \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && musl="${host%-gnu}-musl" \
 && rustup target add "$musl" \
 && cargo build --release -p cni-bridge -p ipam -p cni-overlay \
        --bin berth-bridge --bin berth-host-local --bin berth-overlay --target "$musl" \
 && mkdir /out \
 && for b in berth-overlayd berth-csi; do \
      cp target/release/$b /out/; \
    done \
 && for b in berth-bridge berth-host-local berth-overlay; do \
      cp "target/$musl/release/$b" /out/; \
    done

FROM scratch AS prebuilt
COPY prebuilt/ /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG INSTALL_PACKAGES=true
RUN if [ "$INSTALL_PACKAGES" = true ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends iptables iproute2 e2fsprogs xfsprogs util-linux ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=binaries /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/berth-overlayd"]
