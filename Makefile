# Every target sets up .venv itself on a fresh clone (pinned dependencies from requirements.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Board targets: PORT=/dev/ttyACM0 for a real board; empty = the virtual board (started if needed).
PORT ?=
MODEL ?= out/demo/model.s2lm
DATA ?= out/demo/noisy_finetune.npz
EPOCHS ?= 20
OUT ?= out/adapters
PORT_ARG = $(if $(PORT),--port $(PORT),)
VBOARD = $(if $(PORT),,vboard)

.PHONY: help setup test demo paper bench figures kinds mutate device-files flash finetune pull vboard clean

help:
	@echo "make demo   - pre-train on one room, fine-tune on another with Skip2-LoRA, show the accuracy won back"
	@echo "make test   - run the test suite (host and MicroPython device tests)"
	@echo "make paper  - regenerate docs/RESULTS.md (every method on the cooling-fan drift scenarios and the shifted digits, lr sweep)"
	@echo "make bench  - on-board benchmark of every method (virtual board, then emulated Cortex-M0+ and M4F), regenerates docs/BENCHMARKS.md"
	@echo "make figures - re-render RESULTS.md, BENCHMARKS.md, BOARD_KINDS.md and README's figures from their committed JSON"
	@echo "make kinds  - the fan fine-tune on unix, Cortex-M0+ and M4F firmware: board time, heap, same bytes (docs/BOARD_KINDS.md)"
	@echo "make demo EMULATE=cortex-m0plus   - the demo on emulated Cortex-M0+ firmware (or cortex-m4f)"
	@echo "make mutate - mutation score of the fast host tests on formats, reference, quantize, budget, compiler"
	@echo "make device-files - rewrite device/s2l/config.py and device/package.json from their sources"
	@echo "make flash MODEL=m.s2lm [PORT=/dev/ttyACM0]   - device package + model to the board"
	@echo "make finetune DATA=d.npz [EPOCHS=20] [PORT=…]  - fine-tune on the board"
	@echo "make pull OUT=dir [PORT=…]                     - bring the adapters home"

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
	$(BIN)/python tools/readme_figures.py

mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

kinds: $(STAMP)
	$(BIN)/python tools/board_kinds.py

M4F_RUN := out/vboard-m4f

bench: $(STAMP)
	$(BIN)/skip2lora bench --json docs/BENCHMARKS.json --report docs/BENCHMARKS.md $(PORT_ARG)
	SKIP2LORA_RUN_DIR=$(M4F_RUN) $(BIN)/skip2lora board start --emulate cortex-m4f
	SKIP2LORA_RUN_DIR=$(M4F_RUN) $(BIN)/skip2lora bench --quick --port $(M4F_RUN)/tty \
		--workdir out/bench-m4f --json out/bench-m4f.json; st=$$?; \
		SKIP2LORA_RUN_DIR=$(M4F_RUN) $(BIN)/skip2lora board stop; exit $$st
	$(BIN)/python tests/device/bench_cortexm.py --repeat 2 --direct-disk --m4f-bench out/bench-m4f.json \
		--figures docs/BENCHMARKS.json --report docs/BENCHMARKS.md
	$(BIN)/python tools/readme_figures.py

# The reports again from their committed JSON (no runs): after a change to their wording.
figures: $(STAMP)
	$(BIN)/python tools/make_results.py --render
	$(BIN)/skip2lora bench --from-json docs/BENCHMARKS.json --report docs/BENCHMARKS.md
	$(BIN)/python tools/board_kinds.py --render
	$(BIN)/python tools/readme_figures.py

# Generated device files: the board's defaults from host/skip2lora/config.py, mip's package list
# from device/manifest.py. Tests compare the committed files with the generators' output.
device-files: $(STAMP)
	$(BIN)/python tools/write_device_config.py
	$(BIN)/python tools/write_package_json.py

vboard: $(STAMP)
	$(BIN)/skip2lora board start

flash: $(STAMP) $(VBOARD)
	$(BIN)/skip2lora flash $(MODEL) $(PORT_ARG)

finetune: $(STAMP) $(VBOARD)
	$(BIN)/skip2lora finetune --data $(DATA) --epochs $(EPOCHS) $(PORT_ARG)

pull: $(STAMP) $(VBOARD)
	$(BIN)/skip2lora pull -o $(OUT) $(PORT_ARG)

clean:
	rm -rf $(VENV) out .pytest_cache
