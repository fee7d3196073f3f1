# Every target sets up .venv itself on a fresh clone (pinned dependencies from requirements.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?=
MODEL ?= out/model.s2lm

.PHONY: help setup test demo paper bench flash finetune pull clean

help:
	@echo "make demo   - pre-train on one room, fine-tune on another with Skip2-LoRA, show the accuracy won back"
	@echo "make test   - run the test suite (host and MicroPython device tests)"
	@echo "make paper  - regenerate docs/RESULTS.md (every method on the cooling-fan drift scenarios)"

$(STAMP): requirements.txt pyproject.toml
	@echo "== setting up $(VENV) (pinned dependencies, CPU torch) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python tools/demo.py

paper: $(STAMP)
	$(BIN)/python tools/make_results.py

bench: $(STAMP)
	@echo "make bench: the on-board benchmark comes with the benchmark issue"; exit 1

flash finetune pull: $(STAMP)
	@echo "make $@: talking to a board comes with the board-flow issue"; exit 1

clean:
	rm -rf $(VENV) out .pytest_cache
