# The README's two commands: `make demo` (the main job) and `make test`.
# Both create .venv when missing and reinstall only when pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pgclip-installed

.PHONY: demo test install clean browser-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Without network or cached CLIP weights: make demo DEMO_FLAGS=--test-model
DEMO_FLAGS ?=

demo: $(STAMP)
	$(VENV)/bin/pgclip demo $(DEMO_FLAGS)

# Test files run in parallel (pytest-xdist), each file whole in one process so that its
# module-scoped servers start once; tests/conftest.py picks the number of processes. Then the
# tests marked `alone` (faults under load with time bounds: a neighbouring test process would
# measure the machine, not pgclip), one at a time. The slowest steps are listed at the end of
# each part: the suite must stay well under 15 minutes.
test: $(STAMP) browser-deps
	$(VENV)/bin/python -m pytest -n auto --dist loadfile -m "not alone" --durations=25
	$(VENV)/bin/python -m pytest -m alone --durations=10

# The browser tests (tests/browser) drive Debian's Chromium through Playwright, which never
# downloads a browser. Install it when missing and we can (root or password-less sudo, apt);
# otherwise those tests skip and say why, except with CI=true, where a skip is a failure.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null || \
	    echo "WARNING: could not install chromium: the browser tests will be skipped (and fail with CI=true)"; \
	  else \
	    echo "WARNING: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser tests will be skipped (and fail with CI=true)"; \
	  fi; }

clean:
	rm -rf $(VENV)
