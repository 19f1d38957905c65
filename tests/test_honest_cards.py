"""Cards say what the data is: a demo tree has ILSVRC's layout and wnids but none of ImageNet's images, so neither
the model card nor the Parquet dataset card may call it Kaggle's ILSVRC-2012 or apply ImageNet's terms to it."""
import json

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
