# asyncmesh — make demo (run it), make test (all tests), make e2e, make lint.
GO      ?= go
BIN     := build
ENVOY_BIN = $(shell scripts/install-envoy.sh)
CHROMIUM_BIN = $(shell scripts/install-chromium.sh)

.PHONY: all build wasm images demo test unit deploy-check e2e lint fuzz fuzz-short proto bench bench-run chaos chaos-short chaos-cluster chaos-cluster-short clean sdk-ts-build sdk-ts-test

all: build

wasm:
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -trimpath -ldflags='-s -w' -o $(BIN)/asyncmesh.wasm ./filter

build: wasm
	$(GO) build -o $(BIN)/ ./cmd/asyncmesh ./collector/cmd/collector ./controlplane/cmd/controlplane ./examples/service ./examples/receiver ./examples/demo ./examples/node

# images writes the filter (Wasm image "compat" variant: one layer, plugin.wasm),
# the collector and the control plane (static, linux/amd64, no base image, user
# 65532) as OCI layouts and docker tarballs under build/images, without Docker;
# SOURCE_DATE_EPOCH sets their time (1970 when unset): same inputs, same digests.
images: wasm
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w' -o $(BIN)/linux-amd64/ ./collector/cmd/collector ./controlplane/cmd/controlplane
	$(GO) run ./deploy/cmd/images -wasm $(BIN)/asyncmesh.wasm -collector $(BIN)/linux-amd64/collector -controlplane $(BIN)/linux-amd64/controlplane -out $(BIN)/images

demo: build
	$(BIN)/demo -envoy "$(ENVOY_BIN)" -bin $(BIN)

unit:
	$(GO) test -race -count=1 ./...

e2e: build sdk-ts-build
	ENVOY_BIN="$(ENVOY_BIN)" CHROMIUM_BIN="$(CHROMIUM_BIN)" ASYNCMESH_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -v -timeout 15m ./e2e/

test: lint unit sdk-ts-test deploy-check e2e chaos-short chaos-cluster-short fuzz-short

# sdk-ts-test: the TypeScript SDK's unit tests (node's test runner: the shared
# vectors of sdk/testdata, interoperability with the standardwebhooks package,
# once per id, buffering, rotation); its e2e test is e2e's TestTypeScriptSDK.
# npm ci installs the locked devDependencies (TypeScript, @types/node,
# standardwebhooks) into sdk/typescript/node_modules; it needs Node.js 20+.
sdk-ts-build:
	cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

sdk-ts-test: sdk-ts-build
	cd sdk/typescript && npm run --silent build:test && node --test build/test/*.test.js

# deploy-check renders the Helm chart and controlplane render's output and
# decodes them strictly into Kubernetes', Istio's and Envoy Gateway's types
# (deploy/k8s: a module of its own, which go test ./... from here skips).
deploy-check:
	cd deploy/k8s && $(GO) test -count=1 ./...

# chaos: kill -9 the collector, restart RabbitMQ, stop Elasticsearch and stall
# the receiver under load; fails on any lost or stuck request. The backends
# come from ASYNCMESH_TEST_AMQP_URL / ASYNCMESH_TEST_ES_URL when set (make
# chaos starts them); chaos-short is the bounded version make test runs.
chaos: build
	scripts/with-backends.sh $(MAKE) chaos-short CHAOS_FLAGS="-duration 3m -rate 100 -every 8s"

chaos-short: build
	$(GO) build -o $(BIN)/chaos ./bench/cmd/chaos
	$(BIN)/chaos -envoy "$(ENVOY_BIN)" -bin $(BIN) $(or $(CHAOS_FLAGS),-duration 75s -rate 50 -every 6s)

# chaos-cluster: three collectors behind two Envoys on a three-node RabbitMQ
# and a three-node Elasticsearch cluster, in network namespaces of its own
# (root): kill -9 a collector, stop a node of each cluster, partition a
# collector from the backends, under load; a second service shares the
# clusters under its own prefixes and must never run the first one's
# requests. Fails on any lost, stuck or crossed request (docs/operations.md).
# CHAOS_CLUSTER_FLAGS passes options. It takes 5-6.5 minutes here;
# chaos-cluster-short (2 minutes of load, make test runs it) 3-5, the
# clusters' start and node restarts dominating.
chaos-cluster: build
	$(GO) build -o $(BIN)/chaoscluster ./bench/cmd/chaoscluster
	$(BIN)/chaoscluster -envoy "$(ENVOY_BIN)" -bin $(BIN) $(or $(CHAOS_CLUSTER_FLAGS),-duration 3m -rate 60 -every 8s)

chaos-cluster-short:
	$(MAKE) chaos-cluster CHAOS_CLUSTER_FLAGS="-duration 2m -rate 40 -every 4s -settle 2m"

# bench measures the whole stack on the embedded default and on RabbitMQ +
# Elasticsearch (started once the embedded backend is measured, stopped at the
# end) and rewrites bench/REPORT.md, bench/report.json and bench/latency.png.
# BENCH_FLAGS passes options.
bench: build
	$(MAKE) bench-run BENCH_FLAGS="-start-backends $(BENCH_FLAGS)"

bench-run:
	$(GO) build -o $(BIN)/bench ./bench/cmd/bench
	$(BIN)/bench -envoy "$(ENVOY_BIN)" -bin $(BIN) -out bench $(BENCH_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy/k8s && $(GO) vet ./...
	GOOS=wasip1 GOARCH=wasm $(GO) vet ./filter/...

# fuzz runs every fuzz target of the repository (scripts/fuzz.sh finds each
# func FuzzXxx: a new one needs no line here) for 20s each; fuzz-short for 3s
# each, for CI. FUZZ_ONLY=Verify runs only the targets whose name has Verify.
fuzz:
	GO="$(GO)" scripts/fuzz.sh 20s $(FUZZ_ONLY)

fuzz-short:
	GO="$(GO)" scripts/fuzz.sh 3s $(FUZZ_ONLY)

# proto regenerates client/callbackpb from callback.proto (protoc from PyPI's
# grpcio-tools, the plugins from Go modules; the generated code is committed).
proto:
	python3 -m venv .tools/protoc && .tools/protoc/bin/pip install -q grpcio-tools
	GOBIN=$(CURDIR)/.tools/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12 google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	cd client/callbackpb && PATH=$(CURDIR)/.tools/bin:$$PATH $(CURDIR)/.tools/protoc/bin/python -m grpc_tools.protoc -I. \
		--go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative callback.proto

clean:
	rm -rf $(BIN)
