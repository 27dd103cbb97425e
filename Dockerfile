# Every Berth binary in one small image: build with the Rust toolchain, run on
# Debian slim with the tools the plugins and the driver call (nft for ipMasq,
# mkfs/blkid for volumes).
FROM rust:1.89-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir /out \
 && for b in berth-bridge berth-host-local berth-overlay berth-overlayd berth-csi; do \
      cp target/release/$b /out/; \
    done

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables iproute2 e2fsprogs xfsprogs util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/berth-overlayd"]
