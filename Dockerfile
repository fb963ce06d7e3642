# magistral container image: a fully static binary (scripts/build-static) on distroless static,
# running as the image's non-root user. Build from the repository root:
#   docker build -t registry.example.com/integration/magistral:0.1.0 .
# STATIC_TARGET=x86_64-unknown-linux-gnu builds the static glibc variant instead, about twice the
# publish throughput of musl's allocator (docs/operations.md, "Static binary and image").
# The Helm chart (helm/magistral) runs it read-only, as uid 65532, without capabilities.

FROM rust:1-bookworm AS build
ARG STATIC_TARGET=x86_64-unknown-linux-musl
# The commit magistral_build_info reports (.git is not in the build context):
#   docker build --build-arg MAGISTRAL_BUILD_COMMIT=$(git rev-parse --short HEAD) .
ARG MAGISTRAL_BUILD_COMMIT=unknown
WORKDIR /src
COPY . .
# musl-tools gives ring's few C files a compiler for the musl target.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && MAGISTRAL_STATIC_TARGET="$STATIC_TARGET" scripts/build-static \
    && cp "target/dist/magistral-$STATIC_TARGET" /magistral

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /magistral /usr/local/bin/magistral
USER nonroot:nonroot
EXPOSE 8080
# Listen on all interfaces inside the container; override any setting with MAGISTRAL_* env.
ENV MAGISTRAL_LISTEN=0.0.0.0:8080
ENTRYPOINT ["/usr/local/bin/magistral", "serve"]
