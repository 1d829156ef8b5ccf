# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
VPIP := $(VPY) -m pip
# A CPU build of torch lies on local disk on these machines; a looser requirement
# would pull a multi-GB CUDA build, so torch is pinned first when none is installed.
TORCH_CPU ?= torch==2.13.0

.PHONY: venv install install-dev demo test lint clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPIP) install --quiet --upgrade pip

venv: $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(VPIP) install --quiet "torch>=2.3"; \
	  else $(VPIP) install --quiet "$(TORCH_CPU)"; fi; }

install: venv
	$(VPIP) install --quiet -e .

install-dev: venv
	$(VPIP) install --quiet -e ".[dev]"

demo: install
	$(VENV)/bin/diffc demo --out demo-out

test: install-dev
	$(VENV)/bin/ruff check .
	$(VPY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache
