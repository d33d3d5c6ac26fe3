# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint screenshot clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/ruff check batcher tests bench examples scripts
	$(BIN)/python -m pytest

# bench runs batcher as an installed tool runs, its bytecode compiled (an editable install under
# PYTHONDONTWRITEBYTECODE compiles every module in every process: ~0.2 s each)
bench: $(STAMP)  # prints every figure; exits non-zero if any target is missed
	$(BIN)/python -m compileall -q batcher
	$(BIN)/python bench/bench_planner.py --repeat 3; p=$$?; \
	$(BIN)/python bench/bench_executor.py; e=$$?; \
	$(BIN)/python bench/bench_report.py; r=$$?; \
	$(BIN)/python bench/bench_job.py; j=$$?; \
	$(BIN)/python bench/bench_xlsx.py; x=$$?; \
	exit $$(( p || e || r || j || x ))

screenshot: $(STAMP)  # docs/report.png: the sample job's report in headless chromium
	$(BIN)/python scripts/report_screenshot.py docs/report.png

lint: $(STAMP)
	$(BIN)/ruff check batcher tests bench examples scripts

clean:
	rm -rf $(VENV) out bench/data .pytest_cache .ruff_cache .hypothesis
