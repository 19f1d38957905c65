"""Round trips through transformers: an export loaded with trust_remote_code, trained a step and saved by
transformers (its keys prefixed ``timm_model.``, its head's labels at the config's root) comes back into validate.py,
``modeling.load_model``, ``label_info`` and timm's ``local-dir:`` with its weights and its labels."""
import json

import datasets
import pytest
import timm
import torch
import transformers
from safetensors.torch import load_file

import modeling
import validate


def dataset_labels(dataset) -> tuple[list[str], list[str]]:
    """(wnids in class-index order, their human names) of a preprocess.py output."""
    names = datasets.load_from_disk(str(dataset))["train"].features["label"].names
    return names, json.loads((dataset / "class_descriptions.json").read_text())  # a list in the same order


def fine_tune_and_save(folder, out, **labels) -> torch.nn.Module:
    """What run_image_classification_no_trainer.py does with an export: load it (remote code), one optimizer step,
    ``save_pretrained``."""
    model = transformers.AutoModelForImageClassification.from_pretrained(
        folder, trust_remote_code=True, ignore_mismatched_sizes=True, **labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = model(pixel_values=x, labels=torch.arange(4) % model.config.num_labels).loss
    loss.backward()
    optimizer.step()
    model.save_pretrained(out)
    return model.eval()


@pytest.fixture(scope="module")
def export(preprocessed, tmp_path_factory):
    ids, names = dataset_labels(preprocessed)
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=len(ids)).eval()
    return modeling.save_pretrained(model, tmp_path_factory.mktemp("export") / "final", label_names=ids,
                                    label_descriptions=names, pretrained_cfg={"input_size": (3, 32, 32)})


def test_transformers_saved_fine_tune_is_scored_by_validate_with_its_labels(export, preprocessed, tmp_path,
                                                                             capsys):
    ids, names = dataset_labels(preprocessed)
    # the no_trainer example labels the head by the dataset's ClassLabel names: the wnids
    tuned = fine_tune_and_save(export, tmp_path / "tuned", id2label=dict(enumerate(ids)),
                               label2id={n: i for i, n in enumerate(ids)})
    weights = tmp_path / "tuned" / "model.safetensors"
    assert all(k.startswith("timm_model.") for k in load_file(weights))
    assert modeling.label_info(tmp_path / "tuned") == (ids, names)  # human names kept
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tuned(pixel_values=x).logits
        assert torch.allclose(modeling.load_model(tmp_path / "tuned")(x), expected, atol=1e-5)
        timm_model = timm.create_model(f"local-dir:{tmp_path / 'tuned'}", pretrained=True).eval()
        assert torch.allclose(timm_model(x), expected, atol=1e-5)  # the family strips the prefix for timm too
    scored = validate.main(["--model", str(tmp_path / "tuned"), "--dataset", str(preprocessed), "--batch_size", "4",
                            "--num_workers", "0", "--output", str(tmp_path / "val.json")])
    assert scored["n"] > 0 and 0 <= scored["top1"] <= 100
    # validate.py matched the model's classes to the dataset's by name (else: "warning: --model's class names ...")
    assert "class names" not in capsys.readouterr().err


def test_fine_tune_with_new_classes_keeps_the_new_labels(export, tmp_path):
    fine_tune_and_save(export, tmp_path / "pets", num_labels=2, id2label={0: "cat", 1: "dog"},
                       label2id={"cat": 0, "dog": 1})
    assert modeling.label_info(tmp_path / "pets") == (["cat", "dog"], None)
    model = modeling.load_model(tmp_path / "pets")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_imagenet_1k_export_resaved_by_transformers_keeps_its_wnids(tmp_path):
    """1000 classes in ILSVRC-2012's sorted-wnid order: the export writes no root label_names, so transformers labels
    the head with timm's ImageNet names (two plain "crane"), and its save_pretrained writes those at the root. They
    are the export's classes: label_info gives the wnids, validate.py matches them and still refuses another order."""
    info = timm.data.ImageNetInfo("imagenet-1k")
    ids, names = info.label_names(), info.label_descriptions()
    torch.manual_seed(0)
    model = modeling.create_model("blocknet_tiny", num_classes=1000).eval()
    folder = modeling.save_pretrained(model, tmp_path / "in1k", label_names=ids, label_descriptions=names,
                                      pretrained_cfg={"input_size": (3, 32, 32)})
    tuned = fine_tune_and_save(folder, tmp_path / "tuned")
    assert list(tuned.config.id2label.values()) == names and names.count("crane") == 2  # human, as printed
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["label_names"] == names
    assert modeling.label_info(tmp_path / "tuned") == (ids, names)
    assert validate.check_model_classes(str(tmp_path / "tuned"), ids) is None
    with pytest.raises(ValueError, match="another index order"):
        validate.check_model_classes(str(tmp_path / "tuned"), ids[1:] + ids[:1])
