# Every target creates or reuses .venv. torch is installed first and pinned,
# so pip takes the CPU build instead of a CUDA build of several GB.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
TORCH   := torch==2.13.0
export OMP_NUM_THREADS ?= 2

.PHONY: venv demo test lint docs bench bench-peers clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev,mnist,parquet,ray,hf,docs]" "$(TORCH)"
	touch $(STAMP)

venv: $(STAMP)

# The optimizer demo (GD against EGR at one lr), then the reproductions that show their
# phenomenon in about five minutes on two cores, at their reduced `demo` setting: random-features
# and linear double descent (sample- and epoch-wise), the IGR toy and order check, a short edge of
# stability run. Reports, figures and an index in out/demo/; every experiment's committed
# small/full results: docs/results/README.md.
demo: $(STAMP)
	.venv/bin/implicit-reg demo
	OMP_NUM_THREADS=1 $(PY) -m implicit_reg.experiments._showcase --out out/demo

lint: $(STAMP)
	.venv/bin/ruff check implicit_reg tests benchmarks experiments
	.venv/bin/ruff format --check implicit_reg tests benchmarks experiments

# Tests use tiny problems, for which one BLAS thread is fastest.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# The documentation site (mkdocs.yml: guides, results, gallery, API reference) into site/.
# The suite builds it too, with --strict (tests/test_docs_site.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

# The probe benchmark side by side with curvlinops, which lives only in its own venv
# (.venv-peers, git-ignored), never in the package's dependencies; torch stays pinned there too.
bench-peers:
	test -x .venv-peers/bin/python || python3 -m venv .venv-peers
	.venv-peers/bin/pip install -q $(TORCH)
	echo "$(TORCH)" > .venv-peers/torch-pin.txt
	.venv-peers/bin/pip install -q -c .venv-peers/torch-pin.txt -e . curvlinops-for-pytorch
	.venv-peers/bin/python benchmarks/bench_probes_batched.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache
