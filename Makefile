# Two targets lead: `make demo` (replay real MovieLens-100K) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
METHOD ?= gru4rec
# each cloud job also rehearses this many past clicks per new one: on ML-100K it lifts
# gru4rec's NDCG@10 from 0.29 to 0.41 (README, "Measured so far"); 0 for none
REPLAY_RATIO ?= 4
REPORT ?= runs/demo-ml-100k.json

.PHONY: demo test setup dev browser lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# torch first and pinned: an unpinned torch pulls the CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# the dashboard's browser test: selenium, and Debian's chromium + chromium-driver where
# /usr/bin/chromedriver is missing (apt-get needs root; without it the test says why it
# skips)
$(VENV)/.installed-browser: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet -e '.[dev,browser]'
	touch $@

setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev
browser: $(VENV)/.installed-browser
	@test -x /usr/bin/chromedriver || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || \
		echo "chromium could not be installed: the dashboard's browser test will skip"

demo: setup
	$(BIN)/dcrec data get ml-100k
	$(BIN)/dcrec replay --dataset ml-100k --method $(METHOD) --replay-ratio $(REPLAY_RATIO) \
		--seed 0 --report $(REPORT)

test: dev browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
