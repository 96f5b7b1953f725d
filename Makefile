# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs what
# it needs; torch==2.13.0 (CPU build, on this machine's disk) goes in before anything that depends
# on torch, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adcp-installed
TORCH := torch==2.13.0
# Servers and tools the tests drive for real (Debian packages): skopeo + docker-registry for
# container images, prometheus for the PromQL path of monitoring, chromium for the dashboard's
# browser tests, postgresql (initdb + pg_ctl in a temp dir) for the site review DB's PostgreSQL
# path; fonts-noto-cjk so Chromium draws display names in Chinese (北京一厂), not empty boxes.
# Installed once per machine; the stamp lives in the venv so a fresh clone re-checks them.
DEBS := skopeo docker-registry prometheus chromium postgresql libpq5 fonts-noto-cjk
DEB_STAMP := $(VENV)/.adcp-debs
# The dashboard's chart library, from the npm registry (package-lock.json pins it); served by the
# coordinator itself, never from a CDN.
DASH := coordinator/dashboard
NPM_STAMP := $(DASH)/node_modules/.adcp-installed

.PHONY: demo test install install-test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(DEB_STAMP): $(PY) Makefile
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing >/dev/null; \
	fi
	touch $(DEB_STAMP)

$(NPM_STAMP): $(DASH)/package.json $(DASH)/package-lock.json
	@command -v npm >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q npm >/dev/null; }
	cd $(DASH) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

install: $(STAMP) $(NPM_STAMP)

install-test: install $(DEB_STAMP)

demo: install
	$(VENV)/bin/adcp demo

# Import layering and circles (import-linter contracts in pyproject.toml), then ruff's rule set
# ([tool.ruff] in pyproject.toml; .venv and node_modules are excluded by ruff's defaults).
lint: install
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .

test: install-test lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache $(DASH)/node_modules
