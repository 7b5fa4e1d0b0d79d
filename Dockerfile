# Container images of meshd, meshctl, mesh-agent and the demo app: static
# binaries (CGO_ENABLED=0, -trimpath) on an empty base with a non-root user,
# CA certificates and nothing else. See docs/containers.md.
#
#   docker build -t meshd .                                  # meshd (the default target)
#   docker build --target meshctl -t meshctl .               # one image per binary:
#   docker build --target mesh-agent -t mesh-agent .         #   meshd, meshctl, mesh-agent, demoapp
#   docker build --target demoapp -t meshd-demoapp .
#   docker build --target all -t meshd-all .                 # all four binaries in one image
#   docker build --build-arg VERSION=v0.3.0 --build-arg REVISION="$(git rev-parse HEAD)" -t meshd .
#
# tools/dockerfile's test parses this file with BuildKit's own Dockerfile
# frontend, checks the stages, users and entrypoints, and runs its go
# commands, so they cannot rot unnoticed.

# The Go version of go.mod's "go" line (the test checks they agree).
ARG GO_VERSION=1.26.8
# Where the build stage puts the binaries for the other stages to copy.
ARG OUT=/out

# Compile on the build machine's platform for the target platform: no
# emulation when building images for another architecture.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
# The release version and commit --version prints (internal/buildinfo); the
# build context has no .git, so they are passed in.
ARG VERSION=dev
ARG REVISION=
ARG OUT
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS="${TARGETOS}" GOARCH="${TARGETARCH}" go build -trimpath \
      -ldflags "-s -w -X github.com/meshd/meshd/internal/buildinfo.version=${VERSION} -X github.com/meshd/meshd/internal/buildinfo.revision=${REVISION}" \
      -o "${OUT}/" ./cmd/meshd ./cmd/meshctl ./cmd/mesh-agent ./examples/demoapp
# The runtime's few files: a user and group (uid/gid 65532) with no login,
# the CA bundle (for Consul over https), /tmp, and the state and runtime
# directories owned by that user (0700: meshd keeps its CA keys there).
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/var/lib/meshd /rootfs/run/meshd && \
    echo 'meshd:x:65532:65532:meshd:/var/lib/meshd:/sbin/nologin' > /rootfs/etc/passwd && \
    echo 'meshd:x:65532:' > /rootfs/etc/group && \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ && \
    chmod 1777 /rootfs/tmp && \
    chmod 0700 /rootfs/var/lib/meshd /rootfs/run/meshd

# What every image shares. meshd's state defaults to $XDG_STATE_HOME/meshd:
# /var/lib/meshd, a volume owned by the image's user.
FROM scratch AS base
COPY --from=build /rootfs/etc/ /etc/
COPY --from=build /rootfs/tmp/ /tmp/
COPY --from=build --chown=65532:65532 /rootfs/var/lib/meshd/ /var/lib/meshd/
COPY --from=build --chown=65532:65532 /rootfs/run/meshd/ /run/meshd/
ENV XDG_STATE_HOME=/var/lib
USER 65532:65532
WORKDIR /var/lib/meshd

# The operator CLI: docker run --rm -v meshd-state:/var/lib/meshd meshctl token create --service web
FROM base AS meshctl
ARG OUT
COPY --from=build ${OUT}/meshctl /usr/local/bin/meshctl
ENTRYPOINT ["/usr/local/bin/meshctl"]

# The node agent (docs/identity.md).
FROM base AS mesh-agent
ARG OUT
COPY --from=build ${OUT}/mesh-agent /usr/local/bin/mesh-agent
ENTRYPOINT ["/usr/local/bin/mesh-agent"]

# The demo services and client (examples/demoapp).
FROM base AS demoapp
ARG OUT
COPY --from=build ${OUT}/demoapp /usr/local/bin/demoapp
ENTRYPOINT ["/usr/local/bin/demoapp"]

# Every binary; run one by name: docker run meshd-all meshctl version
FROM base AS all
ARG OUT
COPY --from=build ${OUT}/meshd ${OUT}/meshctl ${OUT}/mesh-agent ${OUT}/demoapp /usr/local/bin/
CMD ["meshd", "--help"]

# The control plane (the default target). It listens on loopback unless
# told otherwise: in a container, give --xds-listen 0.0.0.0:15012 and the
# names proxies use for it (--server-hosts).
FROM base AS meshd
ARG OUT
COPY --from=build ${OUT}/meshd /usr/local/bin/meshd
VOLUME ["/var/lib/meshd"]
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["--help"]
