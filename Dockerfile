# fieldhub and devicesim in one image (docker-compose.yml runs both).
#
#   docker build -t fieldhub .
#   docker run -p 1883:1883 -p 8080:8080 -v fieldhub-data:/data fieldhub
#
# Stages: the web UI (node) → the Go binaries, with the UI embedded → a
# small Debian runtime running as an unprivileged user.

# --- web UI: npm packages from the committed lockfile, bundled by esbuild
FROM node:22-bookworm-slim AS web
WORKDIR /src/dashboard/web
COPY dashboard/web/package.json dashboard/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/web/ ./
RUN npm run build

# --- Go binaries (pure Go, no cgo: the same recipe cross-compiles for ARM
# gateways with GOARCH=arm64)
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
COPY --from=web /src/dashboard/web/dist/ dashboard/web/dist/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/fieldhub ./cmd/fieldhub \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/devicesim ./cmd/devicesim

# --- runtime
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin fieldhub \
 && mkdir -p /data /etc/fieldhub \
 && chown fieldhub:fieldhub /data
COPY --from=build /out/fieldhub /out/devicesim /usr/local/bin/
# Defaults for reference, device types, and devicesim's fleet profiles.
COPY configs/fieldhub.yaml configs/device-types.yaml /etc/fieldhub/
COPY configs/devicesim/ /etc/fieldhub/devicesim/
USER fieldhub
WORKDIR /data
VOLUME /data
ENV FIELDHUB_DATA_DIR=/data
# MQTT, MQTT over WebSocket, HTTP (API, web UI, /metrics, /prometheus).
EXPOSE 1883 1882 8080
ENTRYPOINT ["fieldhub"]
CMD ["serve"]
