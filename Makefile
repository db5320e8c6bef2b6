# asyncmesh — make demo (run it), make test (all tests), make e2e, make lint.
GO      ?= go
BIN     := build
ENVOY_BIN = $(shell scripts/install-envoy.sh)

.PHONY: all build wasm demo test unit e2e lint fuzz clean

all: build

wasm:
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -trimpath -ldflags='-s -w' -o $(BIN)/asyncmesh.wasm ./filter

build: wasm
	$(GO) build -o $(BIN)/ ./collector/cmd/collector ./controlplane/cmd/controlplane ./examples/service ./examples/receiver ./examples/demo

demo: build
	$(BIN)/demo -envoy "$(ENVOY_BIN)" -bin $(BIN)

unit:
	$(GO) test -race -count=1 ./...

e2e: build
	ENVOY_BIN="$(ENVOY_BIN)" ASYNCMESH_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -v -timeout 15m ./e2e/

test: lint unit e2e

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=wasip1 GOARCH=wasm $(GO) vet ./filter/...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseParent -fuzztime 20s ./internal/trace
	$(GO) test -run '^$$' -fuzz FuzzRequestHeaders -fuzztime 20s ./filter
	$(GO) test -run '^$$' -fuzz FuzzVerify -fuzztime 20s ./internal/replay

clean:
	rm -rf $(BIN)
