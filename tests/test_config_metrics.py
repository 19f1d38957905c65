"""The config contract shared by every script, and the offline top-k metric."""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass

import pytest
import torch

from imagenet_trainer.config import parse_config
from imagenet_trainer.metrics import TopK


@dataclass
class Cfg:
    model: str = "resnet18"
    epochs: int = 90  # full passes over train, 100% of it
    lr: float = 0.1
    ema: bool = False
    hub_model_id: str | None = None


def test_precedence_default_yaml_cli(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 16\nlr: 0.5\nema: true\n")
    cfg = parse_config(Cfg, ["--config", str(recipe), "--lr", "0.25"])
    assert cfg == Cfg(model="resnet18", epochs=16, lr=0.25, ema=True)
    assert parse_config(Cfg, ["--ema"]).ema is True
    assert parse_config(Cfg, ["--ema", "false"]).ema is False
    assert parse_config(Cfg, ["--hub_model_id", "none"]).hub_model_id is None
    for written, meant in (("1", True), ("0", False)):  # YAML's 1 and 0 read as the flag's "1" and "0" do
        recipe.write_text(f"ema: {written}\n")
        assert parse_config(Cfg, ["--config", str(recipe)]).ema is parse_config(Cfg, ["--ema", written]).ema is meant


@pytest.mark.parametrize("yaml_text, argv, message", [
    ("learning_rate: 0.1\n", [], "unknown key 'learning_rate'"),
    ("epochs: ten\n", [], "key 'epochs'"),
    ("epochs: 1.5\n", [], "key 'epochs'"),
    ("epochs: 2.0\n", [], "must be an int, got 2.0"),  # as the flag --epochs 2.0 is refused
    ("", ["--epochs", "2.0"], "--epochs must be an int, got '2.0'"),
    ("ema: 2\n", [], "key 'ema' in"),
    ("", ["--lr", "fast"], "--lr must be a float"),
    ("", ["--ema", "maybe"], "--ema must be a bool"),
    ("", ["--nope", "1"], "unrecognized arguments: --nope"),
    ("- a\n- b\n", [], "expected a mapping"),
])
def test_errors_are_one_line(tmp_path, yaml_text, argv, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml_text)
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--config", str(recipe), *argv])
    text = str(err.value)
    assert message in text and "\n" not in text


@dataclass
class Scored:
    mixed_precision: str = ""  # a script's own field (validate.py's) of an accelerate launch option's name


def test_accelerate_launch_options_are_named_for_a_launched_script_only(tmp_path, monkeypatch):
    """A script accelerate launch runs (accelerate_script) names accelerate launch's options given to it, as flags or
    --config keys, with how to give them to the launcher; read from accelerate's own parser, or a short list where
    that does not import. A field of that name is the script's own; other scripts keep argparse's words."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("mixed_precision: bf16\n")
    hint = "is an accelerate launch option: accelerate launch --mixed_precision bf16 x.py ..."
    for argv in (["--mixed_precision", "bf16"], ["--config", str(recipe)]):
        with pytest.raises(SystemExit, match=re.escape(hint)):
            parse_config(Cfg, argv, accelerate_script="x.py")
        with pytest.raises(SystemExit, match="unrecognized arguments: --mixed_precision bf16|unknown key"):
            parse_config(Cfg, argv)
        assert parse_config(Scored, argv, accelerate_script="x.py") == Scored("bf16")
    with pytest.raises(SystemExit, match=re.escape("unrecognized arguments: --bf16 (see --help)")):
        parse_config(Cfg, ["--bf16"], accelerate_script="x.py")
    monkeypatch.setitem(sys.modules, "accelerate.commands.launch", None)  # its import fails
    with pytest.raises(SystemExit, match=re.escape("--num_processes is an accelerate launch option: accelerate launch "
                                                   "--num_processes 2 x.py ...")):
        parse_config(Cfg, ["--num_processes", "2"], accelerate_script="x.py")


def test_a_recipe_and_an_accelerate_config_given_to_each_others_flag_are_named(tmp_path):
    """train.py --config_file RECIPE was told to give it to accelerate launch (which then wants a distributed_type),
    and --config ACCELERATE_CONFIG listed every field as the known keys: each is named for what it is."""
    recipe, launch = tmp_path / "recipes" / "demo.yaml", tmp_path / "cpu_ddp.yaml"
    recipe.parent.mkdir()
    recipe.write_text("epochs: 16\n")
    launch.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n")
    for given in (recipe, tmp_path / "r.yaml"):  # under recipes/, or a mapping of the script's fields
        given.write_text("epochs: 16\nlr: 0.5\n")
        with pytest.raises(SystemExit) as err:
            parse_config(Cfg, ["--config_file", str(given)], accelerate_script="x.py")
        assert f"x.py --config {given} ..." in str(err.value) and "accelerate launch --config_file" not in str(
            err.value), err.value
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--config", str(launch)], accelerate_script="x.py")
    assert str(err.value) == (f"error: --config {launch} is an accelerate config (it has compute_environment), not a "
                              f"recipe of x.py's: accelerate launch --config_file {launch} x.py ...")
    with pytest.raises(SystemExit, match=re.escape(f"accelerate launch --config_file {launch} x.py ...")):
        parse_config(Cfg, ["--config_file", str(launch)], accelerate_script="x.py")
    # a recipe with a typo or a launcher key is still a recipe; an accelerate config under recipes/ is none
    for given, text in ((tmp_path / "typo.yaml", "epochs: 16\nlrr: 1\n"),
                        (tmp_path / "mp.yaml", "mixed_precision: bf16\nepochs: 3\n")):
        given.write_text(text)
        with pytest.raises(SystemExit) as err:
            parse_config(Cfg, ["--config_file", str(given)], accelerate_script="x.py")
        assert f"x.py --config {given} ..." in str(err.value), err.value
    recipe.write_text(launch.read_text())
    with pytest.raises(SystemExit, match=re.escape(f"accelerate launch --config_file {recipe} x.py ...")):
        parse_config(Cfg, ["--config_file", str(recipe)], accelerate_script="x.py")


@pytest.mark.parametrize("argv, recipe", [([], "cpu: false\n"), ([], "multi_gpu: off\n"), (["--multi_gpu=false"], ""),
                                          (["--cpu", "no"], "")])
def test_a_launch_switch_set_false_is_told_to_go_not_to_be_set(tmp_path, argv, recipe):
    """A no-value accelerate launch option set false (a recipe's cpu: false, --multi_gpu=false) was told to pass
    accelerate launch --cpu, the opposite: it is the launcher's default, and goes."""
    (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--config", str(tmp_path / "r.yaml"), *argv], accelerate_script="x.py")
    text = str(err.value)
    assert "accelerate launch --cpu" not in text and "accelerate launch --multi_gpu" not in text, text
    assert "is accelerate launch's default" in text and text.endswith("remove it"), text


@dataclass
class WithMethod:
    size: int = 3
    name: str = "x"  # the name

    def scale(self):  # not a field
        size: int = 4  # a local in a method, not the field's help
        return size


def test_field_comments_come_from_the_class_body_only():
    from imagenet_trainer.config import field_comments  # noqa: PLC0415

    assert field_comments(WithMethod) == {"name": "the name"}


def test_help_shows_each_fields_comment(capsys):
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--help"])
    assert err.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--epochs INT full passes over train, 100% of it (default: 90)" in text


def test_yaml_null_for_a_text_field_means_not_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: null\nhub_model_id: null\n")
    cfg = parse_config(Cfg, ["--config", str(recipe)])
    assert cfg.model == "" and cfg.hub_model_id is None


def test_missing_config_file(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        parse_config(Cfg, ["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("content, message", [
    (b"epochs: [16\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1; fix"),
    (b"model: resnet\xe9\n", "not UTF-8 text (byte 13: 0xe9); save it as UTF-8"),  # a Latin-1 editor's file
    # a recipe copied with the user's value added at the top: yaml.safe_load keeps the later one, the recipe's own
    (b"lr: 0.4\n# the recipe\nepochs: 16\nlr: 0.1\n", "key 'lr' is given twice (lines 1 and 4); keep one"),
    (b"{lr: 0.4, lr: 0.1}\n", "key 'lr' is given twice (line 1); keep one"),
    # YAML 1.1: a leading 0 is octal, colons are base 60
    (b"epochs: 010\n", "key 'epochs' at line 1: YAML 1.1 reads 010 as the octal number 8; write 10, or quote it if "
                       "it is text"),
    (b"model: resnet18\nepochs: 1:30\n", "key 'epochs' at line 2: YAML 1.1 reads 1:30 as the base-60 number 90; "
                                         "write the number plainly, or quote it if it is text"),
    (b"lr: 1:30.5\n", "key 'lr' at line 1: YAML 1.1 reads 1:30.5 as the base-60 number 90.5; write the number"),
    (b"model: 0755\n", "key 'model' at line 1: YAML 1.1 reads 0755 as the octal number 493; write 755, or quote it"),
])
def test_a_config_that_does_not_parse_is_one_line(tmp_path, content, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--config", str(recipe)])
    text = str(err.value)
    assert text.startswith(f"error: --config {recipe}: ") and message in text and "\n" not in text


def test_plain_numbers_quoted_text_and_merge_keys_still_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    # 09 is no octal number (the text '09', read as 9); a merge key's values are meant to be overridden
    recipe.write_text("<<: {epochs: 16, lr: 0.5}\nlr: 0.25\nmodel: '010'\n")
    assert parse_config(Cfg, ["--config", str(recipe)]) == Cfg(model="010", epochs=16, lr=0.25)
    recipe.write_text("epochs: 09\nlr: 0.010\n")
    assert parse_config(Cfg, ["--config", str(recipe)]) == Cfg(epochs=9, lr=0.01)
    # a text field takes what was written, where YAML reads a number, a bool or a date (a run folder named
    # 2024_01_05 would be 20240105, one named yes True); the other fields' values are YAML's
    recipe.write_text("model: 2024_01_05\nepochs: 1_000\n")
    assert parse_config(Cfg, ["--config", str(recipe)]) == Cfg(model="2024_01_05", epochs=1000)
    for written in ("yes", "1.10", "0x10", "2024-01-05"):
        recipe.write_text(f"model: {written}\n")
        assert parse_config(Cfg, ["--config", str(recipe)]).model == written
    # 07 reads as 7 either way, but as a number: a text field (output_dir: 07) would lose its zero, so it is refused
    recipe.write_text("model: 07\n")
    with pytest.raises(SystemExit, match="YAML 1.1 reads 07 as the octal number 7; write 7, or quote it if it is text"):
        parse_config(Cfg, ["--config", str(recipe)])


def test_topk_counts_and_confusions():
    logits = torch.tensor([[9., 1, 2, 3, 4, 5, 0],   # true 0: top-1 hit
                           [1., 9, 8, 0, 0, 0, 0],   # true 2: top-1 miss (pred 1), top-5 hit
                           [0., 1, 2, 3, 4, 5, 9]])  # true 0: miss in top-5 (0 is the smallest)
    labels = torch.tensor([0, 2, 0])
    metric = TopK()
    metric.update(logits[:2], labels[:2])
    metric.update(logits[2:], labels[2:])
    result = metric.compute()
    assert result["n"] == 3
    assert result["top1"] == pytest.approx(100 / 3) and result["top5"] == pytest.approx(200 / 3)
    per_class = metric.per_class()
    assert per_class[0]["n"] == 2 and per_class[0]["top1"] == 50.0 and per_class[2]["top1"] == 0.0
    assert per_class[3]["top1"] is None
    assert sorted((d["true"], d["predicted"], d["count"]) for d in metric.most_confused()) == [(0, 6, 1), (2, 1, 1)]


def test_evaluate_flip_averages_each_image_with_its_mirror():
    from accelerate import Accelerator  # noqa: PLC0415

    from imagenet_trainer.metrics import evaluate  # noqa: PLC0415

    class LeftRight(torch.nn.Module):  # logit 0: brightness of the left half, logit 1: of the right half
        def forward(self, x):
            half = x.shape[3] // 2
            return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)

    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[..., :2] = 255  # bright on the left: logits (1, 0); mirrored (0, 1)
    y = torch.tensor([0, 1])
    accelerator = Accelerator(cpu=True)
    _, plain = evaluate(accelerator, LeftRight(), [(x, y)], (0, 0, 0), (1, 1, 1))
    _, flipped = evaluate(accelerator, LeftRight(), [(x, y)], (0, 0, 0), (1, 1, 1), flip=True)
    assert plain == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2)
    assert flipped == pytest.approx(math.log(2))  # the mean logits (0.5, 0.5)


def test_every_script_flag_has_a_comment_for_help(monkeypatch):
    """Every field of every script's config carries its trailing comment (units, why): --help shows exactly that."""
    import dataclasses  # noqa: PLC0415
    import importlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from imagenet_trainer.config import field_comments  # noqa: PLC0415

    classes = [getattr(importlib.import_module(module), name) for module, name in (
        ("train", "TrainConfig"), ("validate", "ValidateConfig"), ("preprocess", "PreprocessConfig"),
        ("imagenet_trainer.demo", "DemoConfig"))]
    root = Path(__file__).resolve().parents[1]
    for script, name in (("loader", "LoaderBenchConfig"), ("preprocess", "BenchConfig"), ("train_loop", None)):
        spec = importlib.util.spec_from_file_location(f"bench_{script}", root / "benchmarks" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
        spec.loader.exec_module(module)  # by path: benchmarks/preprocess.py must not shadow preprocess.py
        classes += [c for c in vars(module).values() if dataclasses.is_dataclass(c) and c.__module__ == module.__name__
                    and (name is None or c.__name__ == name)]
    assert len(classes) >= 7
    for cls in classes:
        comments = field_comments(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)]
        assert not missing, f"{cls.__name__}: no comment on {missing}"


def test_no_help_text_ends_mid_sentence():
    """--help shows the comment on the field's own line only: a sentence that goes on in the next comment line would
    be cut there ("less one for", "(0: off):")."""
    import dataclasses  # noqa: PLC0415
    import importlib  # noqa: PLC0415
    import re  # noqa: PLC0415

    from imagenet_trainer.config import field_comments  # noqa: PLC0415

    dangling = re.compile(r"(\b(for|of|the|a|and|or)|[:,])$", re.I)
    for module, name in (("train", "TrainConfig"), ("validate", "ValidateConfig"), ("preprocess", "PreprocessConfig")):
        cls = getattr(importlib.import_module(module), name)
        comments = field_comments(cls)
        cut = {f.name: text for f in dataclasses.fields(cls)
               if dangling.search(text := (f.metadata or {}).get("help", comments.get(f.name, "")).strip())}
        assert not cut, f"{name}: help cut mid-sentence: {cut}"
