# image-url-server in a container: built in the Rust image, run from a distroless one
# (glibc, CA certificates, no shell) as a non-root user.
#
#   docker build -t image-url .
#   docker run -p 8080:8080 -e COS_SECRET_ID=… -e COS_SECRET_KEY=… \
#     -e IMAGE_URL_COS__BUCKET=examplebucket-1250000000 -e IMAGE_URL_COS__REGION=ap-guangzhou image-url
#
# CI runs the build command below (scripts/deploy-check.sh) and starts the binary as the
# systemd unit does; it cannot run `docker build` itself (no Docker engine there).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p image-url-server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/image-url-server /usr/local/bin/image-url-server
# Listen on every interface inside the container; everything else comes from the
# environment (IMAGE_URL_<SECTION>__<KEY>, COS_*) or a mounted --config file.
ENV IMAGE_URL_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/image-url-server"]
CMD ["serve"]
