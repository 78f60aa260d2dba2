# Nexus developer commands. `make run` starts the stack, `make test` runs every check CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PROTO_SRC := $(shell find protos/nexus -name '*.proto' | sort)
GOOGLE_PROTOS := $(shell $(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))' 2>/dev/null)
PROTOC := $(PY) -m grpc_tools.protoc -Iprotos -Iprotos/third_party -I$(GOOGLE_PROTOS)

.PHONY: install run test protos check-protos k8s-envoy lint lint-protos validate-envoy check-typescript pytest bench bench-scale bench-tools clean

install: $(VENV)/.installed node_modules/.installed tests/support/oidc/node_modules/.installed \
	tests/support/certified_oidc/node_modules/.installed sdk/typescript/node_modules/.installed \
	tests/support/mcp_inspector/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

tests/support/oidc/node_modules/.installed: tests/support/oidc/package.json tests/support/oidc/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/support/oidc
	touch $@

tests/support/certified_oidc/node_modules/.installed: tests/support/certified_oidc/package.json tests/support/certified_oidc/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/support/certified_oidc
	touch $@

sdk/typescript/node_modules/.installed: sdk/typescript/package.json sdk/typescript/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix sdk/typescript
	touch $@

# npm install, not ci: the lock omits a Windows-only optional package of the Inspector's
# (napi-windows-process-start-time) that registries may not serve, and npm ci refuses a
# lock without it. With the lock in step, install changes neither file.
tests/support/mcp_inspector/node_modules/.installed: tests/support/mcp_inspector/package.json tests/support/mcp_inspector/package-lock.json
	npm install --silent --no-save --no-audit --no-fund --prefix tests/support/mcp_inspector
	touch $@

run: install
	$(PY) -m tools.devstack

# Generated code (and envoy/openapi.json, the REST surface) is committed; `check-protos` fails
# when it is stale.
protos: $(VENV)/.installed
	$(PY) -m tools.genprotos gen/python envoy/nexus.pb envoy/openapi.json

check-protos: $(VENV)/.installed
	rm -rf .build/protos && mkdir -p .build/protos
	$(PY) -m tools.genprotos .build/protos/python .build/protos/nexus.pb .build/protos/openapi.json
	diff -r gen/python .build/protos/python -x __pycache__ || (echo "generated code is stale: run make protos" && exit 1)
	cmp envoy/nexus.pb .build/protos/nexus.pb || (echo "envoy/nexus.pb is stale: run make protos" && exit 1)
	cmp envoy/openapi.json .build/protos/openapi.json || (echo "envoy/openapi.json is stale: run make protos" && exit 1)

# deploy/k8s/envoy-config.yaml is rendered from envoy/envoy.yaml; the deploy tests fail when stale.
k8s-envoy: $(VENV)/.installed
	$(PY) tools/render_k8s_envoy.py

lint-protos: node_modules/.installed
	node_modules/.bin/buf lint

lint: install lint-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services tools bench examples

validate-envoy: $(VENV)/.installed
	$(VENV)/bin/envoy --mode validate -c envoy/envoy.yaml --log-level warn

# The TypeScript SDK built into sdk/typescript/dist (its tests import it from there, as users
# do) and its tests checked, all under tsc --strict; tests/e2e/test_typescript_sdk.py builds
# both again and runs the tests with node --test against the real stack.
check-typescript: sdk/typescript/node_modules/.installed
	sdk/typescript/node_modules/.bin/tsc -p sdk/typescript
	sdk/typescript/node_modules/.bin/tsc -p sdk/typescript/test --noEmit

pytest: install
	$(PY) -m pytest -q

test: check-protos lint validate-envoy check-typescript pytest

# Ratios against a trivial gRPC server measured in the same run, on PostgreSQL (DATABASE_URL,
# else 127.0.0.1:5432 as user postgres); not part of `make test`. h2load comes from Debian's
# nghttp2-client, wrk (the REST cross-check) from Debian's wrk. BENCH_ARGS passes options,
# e.g. BENCH_ARGS='--json /tmp/bench.json'.
bench: install bench-tools
	$(PY) -m bench.hot_path $(BENCH_ARGS)

bench-scale: install bench-tools
	$(PY) -m bench.scale $(BENCH_ARGS)

bench-tools:
	command -v h2load >/dev/null && command -v wrk >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    nghttp2-client wrk; }

clean:
	rm -rf .build .nexus-data
