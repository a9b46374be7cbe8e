# statlane developer commands. Every target creates .venv on first use (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.statlane-installed
# The CPU build of torch 2.13 lies on the developer and CI machines; asking for it by version
# keeps pip from pulling a multi-gigabyte CUDA build.
TORCH_SPEC ?= torch==2.13.0
# A real Triton server for the integration tests: nvidia-pytriton needs numpy<2, so it lives in
# a virtual environment of its own.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.statlane-installed

.PHONY: venv triton-venv demo test lint typecheck pytest pytest-standard-dimse bench bench-smoke clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

triton-venv: $(TRITON_STAMP)

$(TRITON_STAMP):
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton>=0.5" "numpy<2" onnxruntime
	@touch $(TRITON_STAMP)

demo: $(STAMP)
	$(BIN)/statlane demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check serving models preprocessing router benchmarks tests

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exit code 5 means no test was collected: the suite always has tests, so that is a failure.
pytest: $(STAMP) $(TRITON_STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; \
	exit $$rc

# The DICOM gateway's tests once more on pynetdicom's standard server (dicom.fast_path off).
DIMSE_TESTS := tests/test_gateway_dimse.py tests/test_gateway_fast_path.py tests/test_gateway_bounds.py
pytest-standard-dimse: $(STAMP)
	STATLANE_DICOM_FAST_PATH=0 $(BIN)/python -m pytest -q $(DIMSE_TESTS)

test: lint typecheck pytest pytest-standard-dimse

bench: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m benchmarks.preprocess
	$(BIN)/python -m benchmarks.scheduling
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.e2e
	$(BIN)/python -m benchmarks.memory_burst
	$(BIN)/python -m benchmarks.bundles
	$(BIN)/python -m benchmarks.result_objects
	$(BIN)/python -m benchmarks.reliability
	$(BIN)/python -m models.evaluate
	$(BIN)/python -m benchmarks.corpus

bench-smoke: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m benchmarks.preprocess --smoke
	$(BIN)/python -m benchmarks.scheduling --smoke
	$(BIN)/python -m benchmarks.ingest --smoke
	$(BIN)/python -m benchmarks.memory_burst --smoke --out var/bench-smoke
	$(BIN)/python -m benchmarks.e2e --smoke
	$(BIN)/python -m benchmarks.bundles --smoke --out var/bench-smoke
	$(BIN)/python -m benchmarks.result_objects --smoke --out var/bench-smoke
	$(BIN)/python -m benchmarks.reliability --smoke --out var/bench-smoke
	$(BIN)/python -m benchmarks.corpus --smoke --out var/bench-smoke

clean:
	rm -rf $(VENV) $(TRITON_VENV) var .mypy_cache .ruff_cache .pytest_cache
