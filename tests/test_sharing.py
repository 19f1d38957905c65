"""Sharing as a user meets it: the package installs with pip, and every code block of a generated model card runs,
as written, against the exported folder, in a process that sees no checkout."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

import modeling

ROOT = Path(__file__).resolve().parents[1]
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["digit 0", "digit 1", "digit 2", "digit 3"]
CARD = {"repo_id": "me/tiny", "dataset": "me/digits", "epochs": 2, "recipe": {"lr": 0.1, "epochs": 2},
        "results": {"top1": 50.0, "top5": 100.0, "n": 8}}

# runs each ```python block of a card in a fresh namespace, the Hub id replaced by the local folder
RUNNER = r"""
import contextlib, io, json, sys
card, folder, repo = sys.argv[1:]
blocks = __import__("re").findall(r"```python\n(.*?)```", open(card).read(), flags=__import__("re").S)
outputs = []
for block in blocks:
    code = block.replace(f'"hf-hub:{repo}"', repr(f"local-dir:{folder}")).replace(f'"{repo}"', repr(folder))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<card block>", "exec"), {"__name__": "__main__"})
    outputs.append(out.getvalue())
mods = sys.modules
print("RESULT " + json.dumps({"outputs": outputs, "n": len(blocks),
                              "modeling": getattr(mods.get("modeling"), "__file__", None)}))
"""


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), **extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` of the project (its pyproject.toml) into a folder of its own, from a copy of the sources so the
    checkout gets no build/ or egg-info."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("modeling", "imagenet_trainer"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(base / "site"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "site"


def run_card(folder: Path, workdir: Path, env: dict, isolated: bool) -> dict:
    workdir.mkdir()
    shutil.copy(PHOTO, workdir / "photo.jpg")  # the file name the card's snippets open
    flags = ["-I"] if isolated else ["-P", "-s"]  # -P: the working folder is not on sys.path either
    proc = subprocess.run([sys.executable, *flags, "-c", RUNNER, str(folder / "README.md"), str(folder), "me/tiny"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_pip_install_and_every_card_block_of_our_design_runs(installed, tmp_path):
    """blocknet_tiny: the card's timm blocks work after `pip install` (local-dir load, features_only, embeddings),
    its transformers block with trust_remote_code; top-k is clipped to the 4 classes; names are human."""
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "tiny", label_names=WNIDS, label_descriptions=NAMES,
                                      model_card=CARD)
    out = run_card(folder, tmp_path / "work", clean_env(tmp_path, PYTHONPATH=str(installed)), isolated=False)
    assert out["n"] == 4  # classification, feature maps, embeddings, transformers
    assert out["modeling"].startswith(str(installed))  # the installed copy, not the checkout
    classification, features, embeddings, *_ = out["outputs"]
    assert len(classification.splitlines()) == 4 and all(line.split(":")[0] in NAMES
                                                         for line in classification.splitlines())
    assert "torch.Size([1, 16, 32, 32])" in features and "[16, 16, 32, 64, 128] [2, 4, 8, 16, 32]" in features
    assert "torch.Size([1, 128])" in embeddings
    assert all(name in out["outputs"][-1] for name in NAMES)  # the pipeline's answer: human names


def test_every_card_block_of_a_zoo_export_runs_with_no_project_code(tmp_path):
    torch.manual_seed(0)
    model = modeling.create_model("resnet18", num_classes=4).eval()
    folder = modeling.save_pretrained(model, tmp_path / "r18", label_names=WNIDS, label_descriptions=NAMES,
                                      pretrained_cfg={"input_size": (3, 64, 64)}, model_card=CARD)
    text = (folder / "README.md").read_text()
    assert "trust_remote_code" not in text and "import modeling" not in text and not list(folder.glob("*.py"))
    out = run_card(folder, tmp_path / "work", clean_env(tmp_path), isolated=True)
    assert out["n"] == 4 and out["modeling"] is None
    assert re.search(r"\[64, 64, 128, 256, 512\] \[2, 4, 8, 16, 32\]", out["outputs"][1])
    assert all(name in out["outputs"][-1] for name in NAMES)


def test_demo_tree_describes_what_its_images_show(tmp_path):
    """Real ILSVRC wnids (the layout and ids are ImageNet's), honest names: a digits model never answers "tench"."""
    from imagenet_trainer import ilsvrc
    from imagenet_trainer.demo import make_ilsvrc_tree

    tree = make_ilsvrc_tree(tmp_path / "digits", source="digits", num_classes=3, train_per_class=1, val_per_class=1,
                            num_test=1)
    wnids, descriptions = ilsvrc.read_synset_mapping(tree / ilsvrc.SYNSET_MAPPING)
    assert wnids == ilsvrc.imagenet_wnids()[:3] and descriptions == ["digit 0", "digit 1", "digit 2"]
    photos = make_ilsvrc_tree(tmp_path / "photos", source="photos", num_classes=12, train_per_class=1,
                              val_per_class=1, num_test=1)
    _, descriptions = ilsvrc.read_synset_mapping(photos / ilsvrc.SYNSET_MAPPING)
    assert descriptions[:2] == ["astronaut", "chelsea"] and descriptions[10] == "astronaut (variant 1)"
    assert len(set(descriptions)) == 12


# used without an import statement: tensorboard (accelerate's --report_to tracker), turbojpeg (its libturbojpeg is
# loaded through ctypes), ipykernel (runs the notebooks), pytest and the notebook runners (the tests themselves)
NOT_IMPORTED = {"tensorboard", "turbojpeg", "ipykernel", "pytest", "nbclient", "nbformat"}


def test_every_requirement_is_used():
    """requirements.txt lists no dependency that nothing uses (the project once installed `evaluate` for nothing)."""
    import ast
    from importlib.metadata import packages_distributions

    dists = {d.lower().replace("_", "-") for mods in packages_distributions().values() for d in mods}
    by_module = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in packages_distributions().items()}
    imported = set()
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                match = re.match(r"\s*(?:from|import)\s+([A-Za-z_]\w*)", line)
                if match:
                    imported.add(match.group(1))
    used = {d for m in imported for d in by_module.get(m, ())}
    requirements = [line.split("==")[0].strip().lower().replace("_", "-") for line in
                    (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "evaluate" not in requirements
    unused = [r for r in requirements if r in dists and r not in used and r not in NOT_IMPORTED]
    assert unused == [], f"requirements.txt lists {unused}, which nothing imports"
