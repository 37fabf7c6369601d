# Two entry points: `make demo` (fit + predict on real texture photos) and `make test` (`make quick`: the fast tier).
# Both create .venv and install into it on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# The CPU build of torch; a plain `torch` would pull a multi-GB CUDA build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[data,elpv,ray,test]'
	# The official DINOv2 code, the reference our ViT is tested against; its declared dependencies (torchvision,
	# xformers) are not needed for the model code, and PyPI's torchvision does not import beside this torch.
	$(PYTHON) -m pip install --quiet --no-deps dinov2==0.0.1.dev2
	touch $@

.PHONY: install demo test quick
install: $(VENV)/.installed

demo: install
	$(VENV)/bin/patchcore demo --out demo_output

test: install
	$(PYTHON) -m pytest

# The quick tier for the edit-test loop: every test not marked slow.
quick: install
	$(PYTHON) -m pytest -m "not slow"
