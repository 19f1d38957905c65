"""README.md says only what is true, checked where drift is cheap to see: every command of a fenced block that runs
one of our scripts parses with that script's config; every ``--flag`` anywhere is a field of one of our configs or
belongs to the launcher, scheduler or CLI the text names; every program it runs is installed or named as an outside
tool; every file, folder, module and ``modeling.`` name exists; the Layout lists each module of
``imagenet_trainer/`` and ``imagenet_trainer/data/`` and nothing else; the recipe table's epochs are the recipes';
the robustness CSV's columns are the ones written; section 1's zip table is BENCHMARKS.md's run. The metrics.jsonl
columns and run-folder names are checked against a real run in tests/test_train.py; the README's Python blocks run
in tests/test_backbones.py and tests/test_modeling.py."""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import launch_command_parser
from torch.distributed.run import get_args_parser as torchrun_parser

from imagenet_trainer.config import parse_config
from imagenet_trainer.robustness import RESULTS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)  # (language, body)

# the command token -> (module, or benchmarks/ script loaded by path; its config dataclass)
SCRIPTS = {
    "train.py": ("train", "TrainConfig"),
    "slurm/train.sbatch": ("train", "TrainConfig"),  # passes its arguments on to train.py
    "validate.py": ("validate", "ValidateConfig"),
    "preprocess.py": ("preprocess", "PreprocessConfig"),
    "imagenet_trainer.hub_dataset": ("imagenet_trainer.hub_dataset", "HubDatasetConfig"),
    "modeling.refresh_code": ("modeling.refresh_code", "RefreshCodeConfig"),
    "imagenet_trainer.demo": ("imagenet_trainer.demo", "DemoConfig"),
    "benchmarks/loader.py": ("benchmarks/loader.py", "LoaderBenchConfig"),
    "benchmarks/preprocess.py": ("benchmarks/preprocess.py", "BenchConfig"),
    "benchmarks/sync_probe.py": ("benchmarks/sync_probe.py", "ProbeConfig"),  # its flags, before train.py's
}
# programs the README runs that this project does not install (its own come from the environment's bin/)
OUTSIDE_TOOLS = {"make", "kaggle", "unzip", "sbatch", "srun", "scontrol", "scancel", "kill", "kubectl", "for", "done",
                 "pip", "apt-get"}
# flags of the other tools the README's commands call: sbatch/srun, docker, the Hugging Face CLI, tensorboard, argparse
OTHER_TOOLS_FLAGS = {"nodes", "gpus-per-node", "ntasks-per-node", "cpus-per-task", "time", "signal", "shm-size",
                     "repo-type", "local-dir", "logdir", "help"}
USER_FILES = {"modeling/mynet.py"}  # what the README has the user write


@functools.cache
def config_class(name: str):
    module, cls = SCRIPTS[name]
    if module.endswith(".py"):  # by path: benchmarks/preprocess.py must not shadow preprocess.py
        spec = importlib.util.spec_from_file_location(f"readme_{Path(module).stem}", ROOT / module)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded  # dataclasses resolve annotations through it
        spec.loader.exec_module(loaded)
        return getattr(loaded, cls)
    return getattr(importlib.import_module(module), cls)


def split_command(line: str) -> list[str]:
    """A shell line split as the shell would, comments dropped; "..." and "...same arguments..." stand for arguments
    left out and go. Empty for a line that is not shell (Python)."""
    try:
        return shlex.split(re.sub(r"\.\.\.(\w[^.]*\.\.\.)?", " ", line), comments=True)
    except ValueError:
        return []


def fenced_commands() -> list[list[str]]:
    """Each shell line of a fenced block, continuations joined."""
    return [split_command(line) for language, block in FENCED.findall(README) if language == "bash"
            for line in block.replace("\\\n", " ").splitlines()]


def script_calls(commands: list[list[str]]) -> list[tuple[str, list[str]]]:
    """(script, its arguments) for every command that runs one of ours."""
    calls = []
    for tokens in commands:
        for i, token in enumerate(tokens):
            module = tokens[i + 1] if token == "-m" and i + 1 < len(tokens) else ""
            name, start = (module, i + 2) if module else (token, i + 1)
            if name in SCRIPTS and (module or name.endswith((".py", ".sbatch"))):
                calls.append((name, tokens[start:]))
                break
    return calls


CALLS = script_calls(fenced_commands())


def test_the_readme_commands_are_found():
    """The extraction itself: the README's sections run each of these (a failing parse of the README shows here)."""
    assert {name for name, _ in CALLS} >= {"train.py", "slurm/train.sbatch", "validate.py", "preprocess.py",
                                          "imagenet_trainer.hub_dataset"}
    assert len(CALLS) >= 15


@pytest.mark.parametrize("script, args", CALLS, ids=[f"{n} {' '.join(a)[:60]}" for n, a in CALLS])
def test_every_fenced_command_parses_with_its_scripts_config(script, args, monkeypatch):
    """As a user pastes it, from the repository root: flags, values and the recipe it names (required flags the
    README leaves to "..." filled in)."""
    monkeypatch.chdir(ROOT)
    cls = config_class(script)
    given = {a[2:] for a in args if a.startswith("--")}
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    filled = [x for name in required if name not in given for x in (f"--{name}", "x")]
    try:
        parse_config(cls, [*args, *filled])
    except SystemExit as e:
        pytest.fail(f"README: {script} {' '.join(args)}: {e}")


def project_flags() -> dict[str, set[str]]:
    return {name: {f.name for f in dataclasses.fields(config_class(name))} | {"config"} for name in SCRIPTS}


def test_every_flag_named_anywhere_exists():
    """Prose and comments too (`--eval_flip`, `--max_bad_samples`, ...): a field of one of our configs, or a flag of
    accelerate launch, torchrun or the other tools the README's commands call."""
    ours = set().union(*project_flags().values())
    launchers = {opt.lstrip("-") for parser in (launch_command_parser(), torchrun_parser())
                 for action in parser._actions for opt in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", README))
    assert not named - ours - launchers - OTHER_TOOLS_FLAGS


def test_inline_commands_use_their_scripts_flags():
    """An inline `script --flag ...` (e.g. `preprocess.py --verify OUT`) names a flag of that script."""
    flags = project_flags()
    spans = inline_spans()
    checked = 0
    for span in spans:
        for name, args in script_calls([split_command(span)]):
            for flag in (a[2:] for a in args if a.startswith("--")):
                assert flag in flags[name], f"README: `{span}`: {name} has no --{flag}"
                checked += 1
    assert checked >= 5


def inline_spans() -> list[str]:
    """The `code` spans of the prose and tables, one line each."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", FENCED.sub("", README))]


def test_every_program_run_is_installed():
    """Each fenced command's program, and each inline `tool subcommand` (`hf download ...`, `accelerate env`), is one
    the environment installs (accelerate, hf, python, torchrun) or one of the outside tools the text names."""
    installed = {p.name for p in Path(sys.executable).parent.iterdir()}
    programs = [tokens[0] for tokens in fenced_commands() if tokens]
    programs += [span.split()[0] for span in inline_spans()
                 if re.match(r"\S+ (download|upload|launch|auth|config|env)\b", span)]
    assert len(programs) >= 20
    missing = {p for p in programs if Path(p).name not in installed and p not in OUTSIDE_TOOLS}
    assert not missing, f"README runs {sorted(missing)}, which neither requirements.txt nor the text installs"


def test_every_repository_path_and_module_named_exists():
    paths = set(re.findall(r"(?<![\w/.~-])(?:recipes|accelerate_configs|slurm|tests|notebooks|benchmarks|"
                           r"imagenet_trainer|modeling|\.ci)/[\w./-]*", README)) - USER_FILES
    assert len(paths) >= 20
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []
    for name in re.findall(r"\b(?:modeling|imagenet_trainer)(?:\.\w+)+", README):
        head, *rest = name.split(".")
        obj = importlib.import_module(head)
        for attr in rest:  # a submodule not imported yet, or an attribute
            if not hasattr(obj, attr) and importlib.util.find_spec(f"{obj.__name__}.{attr}") is not None:
                importlib.import_module(f"{obj.__name__}.{attr}")
            assert hasattr(obj, attr), f"README names {name}: {obj.__name__} has no {attr}"
            obj = getattr(obj, attr)


def test_layout_lists_every_module():
    """The Layout block's imagenet_trainer/ and imagenet_trainer/data/ modules are the ones in the repository."""
    layout = FENCED.findall(README.split("## Layout", 1)[1])[0][1]
    package, data = layout.split("imagenet_trainer/data/", 1)
    package = package.split("imagenet_trainer/", 1)[1]
    data = data.split("\nmodeling/", 1)[0]
    for text, folder in ((package, ROOT / "imagenet_trainer"), (data, ROOT / "imagenet_trainer" / "data")):
        listed = set(re.findall(r"\b(\w+)\.py\b", text)) - {"train", "preprocess", "validate"}
        present = {p.stem for p in folder.glob("*.py")} - {"__init__"}
        assert listed == present, f"{folder.relative_to(ROOT)}: README lists {sorted(listed - present)} that are " \
                                  f"not there and misses {sorted(present - listed)}"


def test_recipe_table_epochs_are_the_recipes():
    rows = re.findall(r"^\| `(recipes/\w+\.yaml)` \| (\d+) \|", README, flags=re.M)
    assert len(rows) >= 6
    for path, epochs in rows:
        assert yaml.safe_load((ROOT / path).read_text())["epochs"] == int(epochs), path


def test_robustness_csv_columns_are_the_ones_written():
    """RESULTS_COLUMNS is the CSV's header (tests/test_eval_sets.py)."""
    text = README.split("_results.csv` beside `--output`) has", 1)[1]
    listed = text.split("columns (`", 1)[1].split("`", 1)[0]
    assert tuple(c.strip() for c in listed.split(",")) == RESULTS_COLUMNS


def test_zip_table_is_benchmarks_measurement_extrapolated():
    """Section 1's table: BENCHMARKS.md's zip-vs-unzip run on 10,024 images, rounded, and scaled to ImageNet's
    1,331,167 train + val images and ~155 GB."""
    bench = (ROOT / "BENCHMARKS.md").read_text()
    zip_s, zip_mb = map(float, re.search(r"\| `preprocess.py --data_dir kaggle.zip` \(read in place\) \| 10024 \| "
                                         r"([\d.]+) \| \d+ \| ([\d.]+) ", bench).groups())
    unzip_s, tree_s, tree_mb = map(float, re.search(r"\| `unzip -q` \(([\d.]+) s\) then `preprocess.py` on the tree "
                                                    r"\| 10024 \| ([\d.]+) \| \d+ \| ([\d.]+) ", bench).groups())
    source_mb = float(re.search(r"10,024 images \(500x375 / 375x500 JPEGs, (\d+) MB\)", bench).group(1))
    row_zip = re.search(r"\| the zip read in place \| (\d+) s \| (\d+) MB .*?\| ~([\d.]+) h \| ~(\d+) GB \|", README)
    row_tree = re.search(r"\| `unzip`, then preprocess.py on the tree \| (\d+) s \+ (\d+) s \| (\d+) MB .*?\| "
                         r"~([\d.]+) h \| ~(\d+) GB \|", README)
    scale, disk_scale = 1_331_167 / 10_024, 155_000 / source_mb
    assert [float(x) for x in row_zip.groups()] == pytest.approx(
        [zip_s, zip_mb, zip_s * scale / 3600, zip_mb * disk_scale / 1000], rel=0.02, abs=0.51)
    assert [float(x) for x in row_tree.groups()] == pytest.approx(
        [unzip_s, tree_s - unzip_s, tree_mb, tree_s * scale / 3600, tree_mb * disk_scale / 1000], rel=0.02, abs=0.51)


def test_make_install_refuses_a_python_older_than_the_project_in_one_line(tmp_path):
    """Python 3.10 (Ubuntu 22.04's python3) passes `python -m venv` and then fails deep in pip on a numpy pin, or
    later in preprocess.py (hashlib.file_digest is 3.11's): `make install` says which Python it needs first."""
    old = tmp_path / "python3"  # `python -c CODE` as Python 3.10 runs it
    old.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -c "import sys; sys.version_info = (3, 10, 13, '
                   f"'final', 0); exec(sys.argv.pop(1))\" \"${{@:2}}\"\n")
    old.chmod(0o755)
    proc = subprocess.run(["make", "-C", str(ROOT), "install", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "venv").exists()
    assert f"error: {old} is Python 3.10; this project needs 3.11 or newer" in proc.stderr, proc.stderr
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()
