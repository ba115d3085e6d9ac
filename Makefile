# nmt: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/multi30k
MIRROR ?= $(wildcard ../shared/data/multi30k)
DEMO_MINUTES ?= 30
DEMO_RUN ?= runs/demo
TORCH_VERSION ?= 2.13.0

.PHONY: install data demo test test-slow lint bench docs docs-serve clean

install: $(BIN)/nmt

# torch is installed first and pinned, so that the project's `torch>=2.4` range is already
# met and pip does not pull a CUDA build with several GB of extra packages.
$(BIN)/nmt: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,ctranslate2,serve,hf]'
	touch $@

# The docs extra (MkDocs, Material, mkdocstrings), only for the targets that build the site.
$(BIN)/mkdocs: pyproject.toml | install
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

$(DATA)/train.de.gz: | install
	$(BIN)/nmt data get multi30k -o $(DATA) $(if $(MIRROR),--mirror $(MIRROR))

# Multi30k into data/multi30k: copied from ../shared/data/multi30k when it is there (checked
# against the catalog's digests), downloaded otherwise. The tests find it there, or in
# ../shared or $$NMT_MULTI30K (tests/conftest.py); `make test` itself never downloads.
data: $(DATA)/train.de.gz

demo: install $(DATA)/train.de.gz
	$(BIN)/nmt train --train $(DATA)/train --valid $(DATA)/val --src-lang de --tgt-lang en \
		--preset small --max-minutes $(DEMO_MINUTES) --lr 2e-3 --lr-schedule linear \
		--warmup-steps 300 --output $(DEMO_RUN)
	$(BIN)/nmt average -m $(DEMO_RUN) --last 5 --allow-fewer -o $(DEMO_RUN)/averaged --overwrite
	$(BIN)/nmt translate $(DATA)/test_2016_flickr.de.gz -m $(DEMO_RUN)/averaged --beam-size 5 \
		--length-penalty 1.5 -o $(DEMO_RUN)/test_2016_flickr.hyp.en
	$(BIN)/nmt score $(DEMO_RUN)/test_2016_flickr.hyp.en -r $(DATA)/test_2016_flickr.en.gz \
		--metrics bleu,chrf

# Fails, naming where it looked, when no Multi30k is found: run `make data` first.
# PYTEST_ARGS: more pytest options (.ci/run adds a --junitxml report).
test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/pytest -q -m slow

lint: install
	$(BIN)/ruff check nmt cli tests benchmarks
	$(BIN)/ruff format --check nmt cli tests benchmarks
	$(BIN)/mypy

bench: install $(DATA)/train.de.gz
	$(BIN)/python benchmarks/translate_speed.py --model $(DEMO_RUN)/averaged --data $(DATA)

# The site, into site/: offline (no fonts, no CDN), and --strict, so that a broken link, a
# missing page or a docstring the API reference cannot read fails the build.
docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@if grep -rElq '<(script|link)[^>]* (src|href)="(https?:)?//[^"]*(\.js|\.css|shim)"' site; then \
		echo "error: these pages load scripts or styles from the network:"; \
		grep -rEl '<(script|link)[^>]* (src|href)="(https?:)?//[^"]*(\.js|\.css|shim)"' site; exit 1; fi

docs-serve: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache site
