# The two set-up commands of the README:
#   make demo   install, then preprocess -> train (accelerate launch, CPU) -> validate -> export on a generated tree
#   make test   install, then run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_run

.PHONY: demo test install
install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	@# pip's resolver would fail on 3.10 naming a numpy pin, not the interpreter
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: $(PYTHON) is Python %d.%d; this project needs 3.11 or newer: make install PYTHON=python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(PY) -m imagenet_trainer.demo --output $(DEMO)/ILSVRC-demo --source digits --train_per_class 100 --val_per_class 20 --num_test 20
	$(PY) preprocess.py --data_dir $(DEMO)/ILSVRC-demo --output_dir $(DEMO)/dataset --num_proc 2
	$(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml train.py --config recipes/demo.yaml \
		--dataset $(DEMO)/dataset --output_dir $(DEMO)/run
	$(PY) validate.py --model $(DEMO)/run/final --dataset $(DEMO)/dataset --output $(DEMO)/validate.json --num_workers 2

test: $(VENV)/.installed
	# a process per core, at most 4 (the suite's own launches start 2-4 processes each); a test file's tests stay
	# in one process, so its module fixtures are built once
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests
