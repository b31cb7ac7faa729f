# Set-up and the two README commands. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# MONAI Label's own environment (its pins: numpy<2, jsonschema<4, pydicom<3; scripts/label_app/requirements.txt)
LABEL_VENV := .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_REQS := scripts/label_app/requirements.txt
LABEL_STAMP := $(LABEL_VENV)/.installed-$(shell cat pyproject.toml $(LABEL_REQS) | cksum | cut -d' ' -f1)

.PHONY: setup label-env demo test test-fast clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned together (they are on the project machines' local disk)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

label-env: $(LABEL_STAMP)

$(LABEL_STAMP): pyproject.toml $(LABEL_REQS)
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet --upgrade pip
	$(LABEL_PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# MONAI Label first (it settles numpy 1.26 and jsonschema 3.2), then the project: one command
	# for both sends pip backtracking through old monai releases for minutes
	$(LABEL_PY) -m pip install --quiet -r $(LABEL_REQS)
	$(LABEL_PY) -m pip install --quiet -e . -r $(LABEL_REQS)
	rm -f $(LABEL_VENV)/.installed-*
	touch $(LABEL_STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# the MONAI Label server test (tests/test_monailabel.py) runs the server from .venv-label
test: $(STAMP) $(LABEL_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# the edit-test loop: everything but the subprocess runs of whole bundles (pytest marker `bundle`)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not bundle" tests

clean-runs:
	rm -rf runs sample_data
