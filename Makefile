# The README's two commands: `make demo` and `make test`. Each creates the
# virtual environment when it is missing and installs the package into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-examples test-long test-backends lint format clean bench bench-quick \
	pictures examples experiments

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,peers]'
	touch $(STAMP)

# The main job: pretrain a masked-LM encoder with dynamic masking on the
# embedded corpus (about 4 minutes on 2 cores), then fill a mask with it.
demo: $(STAMP)
	$(VENV)/bin/keras-dynmask pretrain
	$(VENV)/bin/keras-dynmask fill-mask "Return the [MASK] of items in a list."

# The tests run in one worker process per CPU (pytest-xdist), a test
# file to a worker: 7 min 42 s on 2 cores instead of 12 min 14 s.
PYTEST := -m pytest -q -n auto --dist loadfile

# Everything but the examples' end-to-end runs (make test-examples) and
# the tests of over a minute each (make test-long). One thread per
# TensorFlow op: the workers already fill the cores (the CLI-heavy test
# files ran 8% faster so on 2 cores).
test: export TF_NUM_INTRAOP_THREADS := 1
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) $(PYTEST) -m "not example_run and not long"

# The examples' --quick runs, end to end: each trains, exports and
# generates through the command, as a user runs it (one per worker).
test-examples: $(STAMP)
	$(PY) -m pytest -q -n auto --dist load -m example_run tests/test_examples.py

# Benchmarks need keras-hub, an anchor, never a runtime dependency.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

bench-quick: $(BENCH_STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV)-jax $(VENV)-torch $(VENV)-core build *.egg-info

# The layers and models under Keras' JAX and PyTorch backends, each in its
# own virtual environment (with TensorFlow too: data, tokenizer and export
# stay TensorFlow's); TensorFlow-only tests are skipped there.
LIBRARY_TESTS := tests/test_patterns.py tests/test_attention.py \
	tests/test_scores.py tests/test_score_attention.py \
	tests/test_token_masks.py tests/test_token_masking.py \
	tests/test_functional.py tests/test_models.py tests/test_generation.py \
	tests/test_time_frequency_masking.py tests/test_layout.py \
	tests/test_without_tensorflow.py tests/test_keras_peers.py \
	tests/test_drop_in.py tests/test_grouped_query_attention.py \
	tests/test_blockwise.py tests/test_seq2seq_generation.py \
	tests/test_data_parallel.py
BACKEND_TESTS := $(LIBRARY_TESTS) tests/test_backends.py

$(VENV)-%/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)-$*
	$(VENV)-$*/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-$*/bin/python -m pip install --quiet -e '.[test,$*]'
	touch $@

# The library alone, under JAX, where TensorFlow is not installed: the
# package without its dependencies, then setup.cfg's requirements less
# TensorFlow's (tensorflow, tensorflow-text, ai-edge-litert and the
# serving API), plus the test tools and JAX.
CORE_REQUIREMENTS = $(shell $(PYTHON) -c "import configparser; \
	c = configparser.ConfigParser(); c.read('setup.cfg'); \
	e = c['options.extras_require']; \
	r = (c['options']['install_requires'] + e['test'] + e['jax']).split(); \
	print(' '.join(repr(x) for x in r if not x.startswith( \
	('tensorflow', 'ai-edge-litert', 'ruff'))))")

$(VENV)-core/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)-core
	$(VENV)-core/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-core/bin/python -m pip install --quiet $(CORE_REQUIREMENTS)
	$(VENV)-core/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-backends: $(VENV)-jax/.installed $(VENV)-torch/.installed \
		$(VENV)-core/.installed
	KERAS_BACKEND=jax $(VENV)-jax/bin/python $(PYTEST) $(BACKEND_TESTS)
	KERAS_BACKEND=torch $(VENV)-torch/bin/python $(PYTEST) $(BACKEND_TESTS)
	KERAS_BACKEND=jax KERAS_DYNMASK_NO_TENSORFLOW=1 \
		$(VENV)-core/bin/python $(PYTEST) $(LIBRARY_TESTS)

# The tests of over a minute each (processes killed and resumed, several
# workers), and property tests with 5,000 examples each instead of 500.
# CI runs `test`. The tests marked long took 10 minutes here, two at a time.
test-long: $(STAMP)
	HYPOTHESIS_PROFILE=long $(PY) $(PYTEST) -m "not example_run"

# The README's gallery: one picture per mask kind, in docs/gallery/.
pictures: $(STAMP)
	$(PY) examples/gallery.py --output docs/gallery

# The runnable examples, with their defaults (each under ten minutes on 2
# cores). The speech example installs espeak-ng with apt-get when it can.
examples: $(STAMP)
	$(PY) examples/translation.py
	$(PY) examples/text_generation.py
	$(PY) examples/speech_commands.py

# The experiments, with their defaults; tables and plots land in
# examples/results/. Static against dynamic masking takes about 13
# minutes on 2 cores, the strategies fine-tuned downstream about 27,
# the positions read past their training length about 15.
experiments: $(STAMP)
	$(PY) examples/static_vs_dynamic_masking.py
	$(PY) examples/masking_strategies.py
	$(PY) examples/length_extrapolation.py
