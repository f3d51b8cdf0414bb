# palette-lens: `make demo` and `make test` install into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs/demo
# torch's OpenMP threads wait passively: with another job on the cores, active spinning made generation
# 3-6x slower here; on an idle machine it costs nothing measurable.
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: install demo demo-quick test test-fast bench notebooks lab docs clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# CPU PyTorch where no GPU is present (a plain `torch` requirement would pull a multi-GB CUDA build).
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default PyTorch build"; $(PIP) install -q torch; \
	else \
		$(PIP) install -q torch==2.13.0; \
	fi
	@# constraints.txt holds the tested versions of the model stack (transformers, transformer-lens, peft, ...).
	$(PIP) install -q -c constraints.txt -e '.[default-model,dev,notebooks,browser,docs]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/palette-lens demo --out $(OUT)
	@echo "report: $(OUT)/report.html  metrics: $(OUT)/metrics.json"

demo-quick: install
	$(VENV)/bin/palette-lens demo --quick --out $(OUT)-quick
	@echo "report: $(OUT)-quick/report.html  metrics: $(OUT)-quick/metrics.json"

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not integration"

bench: install
	$(PY) benchmarks/run_all.py

notebooks: install
	$(PY) -m palette_lens.notebooks.runner notebooks

lab: install
	$(VENV)/bin/jupyter lab notebooks/

docs: install
	$(VENV)/bin/mkdocs build --strict -d site

clean-cache:
	rm -rf $${PALETTE_LENS_CACHE:-$$HOME/.cache/palette-lens}
