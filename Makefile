# fieldhub: `make run` starts the hub with embedded defaults, `make test`
# runs every test against real components (mosquitto, influxd, chromium).

GO       ?= go
TOOLS    := $(CURDIR)/.tools/bin
INFLUXD  := $(TOOLS)/influxd
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
DATA_DIR ?= $(CURDIR)/data
# Tests run under the race detector; the suite starts real servers, so give it time.
TESTFLAGS ?= -race -count=1 -timeout 25m

export PATH := $(TOOLS):$(PATH):/usr/sbin

.PHONY: all build run test test-short bench lint tools clean assets

all: build

# The web UI (dashboard/web): npm packages from the committed lockfile,
# bundled by esbuild into dashboard/web/dist, which go build embeds. The
# output is not committed; a binary built without it serves a page saying
# to run `make build`.
WEB     := dashboard/web
WEB_SRC := $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/package.json $(WEB)/tsconfig.json $(WEB)/build.mjs

## assets: install the UI's npm dependencies (npm ci) and build it
assets: $(WEB)/dist/index.html

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund

$(WEB)/dist/index.html: $(WEB)/node_modules/.package-lock.json $(WEB_SRC)
	cd $(WEB) && npm run build

build: assets
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/fieldhub ./cmd/fieldhub
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/devicesim ./cmd/devicesim

## run: build and start the whole hub with the embedded defaults, data in ./data
run: build
	./bin/fieldhub serve --data-dir $(DATA_DIR)

## test: every test, with the race detector, against real components
test: tools assets
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...

test-short:
	$(GO) test -short -count=1 ./...

## bench: Go benchmarks and the end-to-end load benchmark (see docs/benchmarks.md)
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./telemetry/ ./store/... ./registry/ ./ingest/
	FIELDHUB_BENCH=1 $(GO) test -count=1 -timeout 40m -run 'TestHubLoad|TestMeasureScaleOut' -v ./hub/

lint: assets
	@out=$$(gofmt -l . | grep -v '^vendor/'); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd $(WEB) && npm run check

## tools: influxd v1.8.3 (v2-compatible API) for the integration tests, into .tools/bin
tools: $(INFLUXD)

$(INFLUXD):
	GOBIN=$(TOOLS) $(GO) install github.com/influxdata/influxdb/cmd/influxd@v1.8.3

clean:
	rm -rf bin test-artifacts
	find $(WEB)/dist -mindepth 1 ! -name .gitkeep -delete
