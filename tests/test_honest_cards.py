"""Cards say what is true: a demo tree has ILSVRC's layout and wnids but none of ImageNet's images, so neither
the model card nor the Parquet dataset card may call it Kaggle's ILSVRC-2012 or apply ImageNet's terms to it; the
model card's snippets say the shapes the export gives."""
import json
import re

import pytest
import timm
import torch

import modeling
from imagenet_trainer import hub_dataset


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
