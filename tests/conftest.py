"""Shared fixtures: small real ILSVRC trees in Kaggle's layout and preprocess.py's output on them.

- ``ilsvrc_tree``: photos, every planted fault (see imagenet_trainer/demo.py; ``demo_manifest.json`` in the tree
  says what was planted where), 4 classes x 6 train, 8 val, 4 test files.
- ``preprocessed``: path of ``preprocess.py``'s output on ``ilsvrc_tree`` (2 processes, shards of 5 images), a
  DatasetDict folder: ``datasets.load_from_disk(preprocessed)``.
- ``digits_dataset``: path of ``preprocess.py``'s output on a digits tree, 10 classes x 100 train and 20 val
  (stratified), 20 test; for "does it learn" tests.

All are session-scoped: treat them as read-only.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# transformers copies a remote-code model's modules into HF_MODULES_CACHE (by default in the user's
# ~/.cache/huggingface) and imports them from there: each test process has its own, so the processes `make test` runs
# side by side never import a file another one is writing, and the suite leaves nothing in the user's cache
_MODULES = tempfile.mkdtemp(prefix="hf_modules_")
os.environ["HF_MODULES_CACHE"] = _MODULES
atexit.register(shutil.rmtree, _MODULES, True)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # preprocess.py and train.py are top-level scripts

import preprocess  # noqa: E402
from imagenet_trainer import stop_signals  # noqa: E402
from imagenet_trainer.demo import make_ilsvrc_tree  # noqa: E402


@pytest.fixture(autouse=True)
def _stop_signals_restored():
    """A test that runs train.py's stop handling in this process (StopSignal installs its handlers) leaves the
    handlers and the signals it received to the tests after it: a later Ctrl-C or SIGTERM (a CI cancel) to this
    pytest process would be remembered, not acted on, and a later StopSignal would see an old stop."""
    handlers = {sig: signal.getsignal(sig) for sig in stop_signals.STOP_SIGNALS}
    yield
    for sig, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, which cannot be put back
            signal.signal(sig, handler)
    stop_signals.received.clear()
    stop_signals.received_at.clear()


@pytest.fixture(scope="session")
def ilsvrc_tree(tmp_path_factory) -> Path:
    return make_ilsvrc_tree(tmp_path_factory.mktemp("ilsvrc") / "kaggle", source="photos", num_classes=4,
                            train_per_class=6, val_per_class=2, num_test=4, faults=True, seed=0)


@pytest.fixture(scope="session")
def preprocessed(ilsvrc_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preprocessed") / "imagenet"
    preprocess.main(["--data_dir", str(ilsvrc_tree), "--output_dir", str(out), "--num_proc", "2",
                     "--shard_size", "5"])
    return out


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("digits")
    tree = make_ilsvrc_tree(base / "kaggle", source="digits", num_classes=10, train_per_class=100,
                            val_per_class=20, num_test=20, seed=0)
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(base / "digits"), "--num_proc", "1"])
    return base / "digits"
