"""Cards say what is true: a demo tree has ILSVRC's layout and wnids but none of ImageNet's images, so neither
the model card nor the Parquet dataset card may call it Kaggle's ILSVRC-2012 or apply ImageNet's terms to it; the
model card's snippets say the shapes the export gives, and claim a copy of a family's code only where the export
holds one."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from test_modeling import PHOTO, restored_registry

import modeling
from imagenet_trainer import hub_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_demo_source_is_recorded_and_carried_into_both_cards(preprocessed, tmp_path):
    source = json.loads((preprocessed / "source.json").read_text())
    assert source["layout"] == "ilsvrc-kaggle"  # the layout is ILSVRC's ...
    assert "scikit-image's bundled photos" in source["generated"]  # ... the images are not ImageNet's

    model = modeling.create_model("blocknet_tiny", num_classes=4)
    folder = modeling.save_pretrained(model, tmp_path / "final", label_names=[f"n{i:08d}" for i in range(4)],
                                      model_card={"dataset": str(preprocessed)})
    card = (folder / "README.md").read_text()
    assert "scikit-image's bundled photos" in card and "Kaggle's ILSVRC-2012 tree" not in card

    parquet = hub_dataset.export_parquet(preprocessed, tmp_path / "parquet")
    dataset_card = (parquet / "README.md").read_text()
    assert "scikit-image's bundled photos" in dataset_card
    assert "ImageNet's terms" not in dataset_card and "license: other" not in dataset_card


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in modeling.list_models()] + [
    ("blocknet_tiny", {"output_stride": 16}), ("resnet18", {})])
def test_card_snippets_state_the_strides_and_embedding_width_the_export_gives(name, kwargs, tmp_path):
    """The feature-map snippet's strides are its features_only maps' (AlexNet's start at 4, a dilated stage repeats
    16), the embedding snippet's width is what num_classes=0 returns (AlexNet: fc7's 4096, not num_features)."""
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4, **kwargs).eval()
    folder = modeling.save_pretrained(model, tmp_path / name, label_names=[f"n{i:08d}" for i in range(4)],
                                      pretrained_cfg={"input_size": (3, 96, 96)})
    card = (folder / "README.md").read_text()
    strides = re.search(r"# \(1, channels, height, width\), strides ([\d, ]+) from the input", card)
    width = re.search(r"print\(embedding.shape\)  # \(1, (\d+)\)", card)
    assert strides and width, card
    backbone = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True)
    assert [int(s) for s in strides.group(1).split(", ")] == backbone.feature_info.reduction()
    with torch.no_grad():
        embedding = modeling.load_model(folder, num_classes=0)(torch.randn(1, 3, 96, 96))
    assert embedding.shape == (1, int(width.group(1)))


@pytest.mark.parametrize("crop_pct, mode, padded", [(1.15, "center", True), (1.15, "squash", True),
                                                    (1.15, "border", False), (0.875, "center", False)])
def test_card_says_a_crop_larger_than_the_resized_image_is_padded(crop_pct, mode, padded):
    """timm's volo_d5_512 (crop_pct 1.15) resizes to 445 px and centre-crops 512: 67 rows of black in every image."""
    from modeling.card import preprocessing
    words = preprocessing({"input_size": (3, 512, 512), "crop_pct": crop_pct, "crop_mode": mode,
                           "interpolation": "bicubic"})
    assert ("padded with black" in words) == padded, words


# a family of the user's outside modeling/ that reuses BlockNet: its file imports project code, so the export
# cannot carry it (modeling.remote_code) and the card must send the user to the file itself
BLOCKNET_USER_FAMILY = """from timm.models import build_model_with_cfg, generate_default_cfgs

from modeling import register
from modeling.blocknet import FAMILY_CFG, BlockNet, BlockNetCfg

default_cfgs = generate_default_cfgs({"NAME_a": {**FAMILY_CFG, "input_size": (3, 32, 32), "pool_size": (1, 1)}})


@register
def NAME_a(pretrained: bool = False, **kwargs) -> BlockNet:
    cfg = BlockNetCfg(depths=(1, 1), widths=(8, 16), strides=(2, 2), stem="conv3", stem_width=8)
    return build_model_with_cfg(BlockNet, "NAME_a", pretrained, model_cfg=cfg,
                                feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2)}, **kwargs)
"""
SAVE_AS_SCRIPT = """

if __name__ == "__main__":
    import sys

    import modeling

    modeling.save_pretrained(modeling.create_model("NAME_a", num_classes=3), sys.argv[1], label_names=list("abc"))
"""
LIBRARIES = {"timm", "torch", "transformers", "PIL", "huggingface_hub", "importlib", "sys", "pathlib"}

# every python block of a card, its Hub ids pointed at the local folder and its photo at a real one
RUN_BLOCKS = r"""
import contextlib, io, re, sys
folder, photo = sys.argv[1:]
card = open(f"{folder}/README.md").read().replace('"hf-hub:OWNER/NAME"', repr(f"local-dir:{folder}")).replace(
    '"OWNER/NAME"', repr(folder)).replace('"photo.jpg"', repr(photo))
blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
for block in blocks:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "<card block>", "exec"), {"__name__": "__main__"})
print("RAN", len(blocks))
"""


def check_card_without_the_family_code(folder: Path, module: str | None) -> str:
    """The export of a family whose code it does not carry: no .py files, no claim of a copy, no ``import
    __main__``; the card's code imports libraries, ``modeling`` or ``module``, which its prose says to import
    (None: no file holds the family, nothing of it is imported)."""
    assert not list(folder.glob("*.py"))
    card = (folder / "README.md").read_text()
    assert "holds a copy" not in card and "import __main__" not in card and "__main__.py" not in card, card
    assert "does NOT include that code" in card
    imported = set()
    for block in re.findall(r"```python\n(.*?)```", card, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
    allowed = {name for name in imported if name.split(".")[0] in LIBRARIES} | {"modeling", module}
    assert imported <= allowed, sorted(imported - allowed)
    prose = re.sub(r"```.*?```", "", card, flags=re.S)
    if module:
        assert f"`import {module}`" in prose and module in imported
        assert f"registered first, as above (`import {module}`)" in prose  # transformers' section: the same line
    return card


def run_card_blocks(folder: Path, path: list[Path], tmp_path: Path) -> None:
    """Every python block of the card in a fresh interpreter whose Python path holds ``path`` (the user's folder,
    this project: what the card says to install) and not the export's folder."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKS, str(folder), str(PHOTO)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "RAN 4" in proc.stdout, proc.stderr[-3000:]


def test_card_of_a_family_whose_file_imports_project_code_names_that_module(tmp_path, monkeypatch):
    """usernet.py outside modeling/ builds BlockNet (``from modeling.blocknet import BlockNet``): the export carries
    no code, so the card may not claim a copy of usernet.py; it says to import usernet itself, and its blocks run
    where that file and this project are importable."""
    (tmp_path / "usernet_honest.py").write_text(BLOCKNET_USER_FAMILY.replace("NAME", "usernet_honest"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usernet_honest", raising=False)
    with restored_registry():
        import usernet_honest  # noqa: F401

        model = modeling.create_model("usernet_honest_a", num_classes=3)
        with pytest.warns(UserWarning, match="the export carries no code for transformers' trust_remote_code load"):
            folder = modeling.save_pretrained(model, tmp_path / "export", label_names=list("abc"))
    card = check_card_without_the_family_code(folder, "usernet_honest")
    assert "defined in `usernet_honest.py`" in card
    run_card_blocks(folder, [tmp_path, ROOT], tmp_path)


@pytest.mark.parametrize("how", ["script", "python -c", "stdin"])
def test_card_of_a_family_defined_in_a_script_names_the_script_not_main(how, tmp_path):
    """A family defined in the script that exports it runs as ``__main__``: the card names the script's file and
    imports it by its stem (its blocks then run); code no file holds (``python -c``, ``python -`` reading stdin, whose
    source file is the non-existent "<stdin>", a notebook) is named as such, with nothing to import."""
    source = (BLOCKNET_USER_FAMILY + SAVE_AS_SCRIPT).replace("NAME", "scriptnet_honest")
    script = tmp_path / "scriptnet_honest.py"
    script.write_text(source)
    folder = tmp_path / "export"
    command = {"script": [str(script)], "python -c": ["-c", source], "stdin": ["-"]}[how]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *command, str(folder)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, input=source if how == "stdin" else None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the export carries no code for transformers' trust_remote_code load" in proc.stderr
    card = check_card_without_the_family_code(folder, "scriptnet_honest" if how == "script" else None)
    if how == "script":
        assert "defined in the script `scriptnet_honest.py`" in card
        run_card_blocks(folder, [tmp_path, ROOT], tmp_path)
    else:
        assert "code run as `__main__` that no file holds" in card


def test_card_gives_the_global_batch_and_peak_lr_the_optimizer_trained_with(tmp_path):
    """recipes/resnet18.yaml on 8 processes: its --lr 0.125 is per 256 images and --batch_size 128 per device, and the
    optimizer peaked at 0.5 with 1024 images a step, the numbers a trainer that takes an absolute --lr needs. The card
    heads its table with those and says what the flags' units are; a float product shows as the number it is."""
    import dataclasses  # noqa: PLC0415

    import train  # noqa: PLC0415
    from imagenet_trainer.config import parse_config  # noqa: PLC0415

    cfg = parse_config(train.TrainConfig, ["--config", str(ROOT / "recipes" / "resnet18.yaml"), "--dataset", "x"])
    model = modeling.create_model("blocknet_tiny", num_classes=4)
    cards = []
    for run, processes in ((cfg, 8), (dataclasses.replace(cfg, lr=0.1), 6)):  # 0.1 x 768 / 256: 0.30000000000000004
        recipe = {**dataclasses.asdict(run), **train.scaled(run, processes)}  # as train.py's export gives it
        folder = modeling.save_pretrained(model, tmp_path / f"final{processes}", model_card={"recipe": recipe},
                                          label_names=[f"n{i:08d}" for i in range(4)])
        cards.append((folder / "README.md").read_text())
    table = cards[0][cards[0].index("| hyper-parameter | value |"):].splitlines()
    assert table[2:4] == [
        "| global batch (images per optimizer step: batch_size x grad_accum_steps x processes) | 1024 |",
        "| peak lr (absolute, the schedule's at the end of warmup: lr x global batch / 256) | 0.5 |"], table[:6]
    assert "| lr | 0.125 |" in table and "| batch_size | 128 |" in table
    assert ("`lr` is per 256 images of the global batch and `batch_size` images per device (train.py's flags); the "
            "global batch is what each optimizer step took and the peak lr what its schedule rose to (a run cut short "
            "in warmup stops below it)") in cards[0]
    assert "| peak lr (absolute, the schedule's at the end of warmup: lr x global batch / 256) | 0.3 |" in cards[1]
