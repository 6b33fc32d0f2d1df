# rtmpx gateway image: build with the Rust toolchain, run from a small distroless base.
#   docker build -t rtmpx .
#   docker run --rm -p 1935:1935 rtmpx            # embedded default: rtmp on 1935, app "live"
# docker-compose.yml runs it with deploy/rtmpx.toml in front of an nginx-rtmp origin.
# Not built in this project's CI (no container engine there); scripts/check_msrv.py keeps the
# toolchain below at least what Cargo.lock needs (the workspace's rust-version).

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rtmpx \
 && strip target/release/rtmpx \
 && mkdir -p /out/certs \
 && cp target/release/rtmpx /out/rtmpx

# glibc and libgcc only, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/rtmpx /usr/local/bin/rtmpx
# The development certificate is written here on first start (a named volume keeps it).
COPY --from=build --chown=65532:65532 /out/certs /certs
WORKDIR /certs
# rtmp/rtmpe (and rtmpt on the same port), rtmps/rtmpts, rtmpt/rtmpte, admin
EXPOSE 1935 443 80 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rtmpx"]
CMD ["serve"]
