"""A preprocess.py dataset as a Hub dataset repo: Parquet shards, class names and provenance in its card.

    python -m imagenet_trainer.hub_dataset --dataset OUT --output_dir OUT-parquet                  # local copy only
    python -m imagenet_trainer.hub_dataset --dataset OUT --output_dir OUT-parquet --push_to_hub you/imagenet-1k

The folder it writes is what the Hub repo holds (``data/<split>-NNNNN-of-NNNNN.parquet``, ``README.md`` with the
``configs``/``dataset_info`` front matter, ``class_descriptions.json``, ``source.json``), so ``train.py --dataset
OUT-parquet`` and, once pushed, ``train.py --dataset you/imagenet-1k`` on another machine train with the same
labels (ClassLabel names = wnids, in the same order) and the same human names. Parquet keeps the ClassLabel names
in its schema but not ``DatasetInfo.description``, where preprocess.py keeps the human names: they travel in
``class_descriptions.json``, which ``load_image_dataset`` reads back. ImageNet's terms of access allow research use
and no redistribution, so the repo is created private unless ``--public`` is given.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub import DatasetCardData, HfApi, get_token

from imagenet_trainer import ilsvrc
from imagenet_trainer.config import parse_config
from imagenet_trainer.manifest import SOURCE_FILE
from imagenet_trainer.runinfo import replace_dir, share_tree

SHARD_BYTES = 500 * 2**20  # Parquet shard size: the Hub's dataset viewer and datasets' streaming like ~500 MB files


@dataclass(kw_only=True)  # kw_only: required fields stand among fields with defaults
class HubDatasetConfig:
    dataset: str  # preprocess.py output folder (a saved DatasetDict)
    output_dir: str  # the Parquet repo folder to write (replaced once complete)
    push_to_hub: str = ""  # Hub dataset id OWNER/NAME to upload output_dir to; empty: write it only
    public: bool = False  # create the Hub repo public; ImageNet's terms forbid redistributing its images


def export_parquet(dataset_dir, output_dir, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the Hub layout of a preprocess.py DatasetDict into ``output_dir`` (atomically); returns it."""
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    ds = datasets.load_from_disk(str(dataset_dir))
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{dataset_dir}: a single Dataset, not preprocess.py's DatasetDict of splits")
    descriptions = ilsvrc.class_descriptions(ds)
    source_path = dataset_dir / SOURCE_FILE
    source = json.loads(source_path.read_text()) if source_path.is_file() else {}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.tmp-"))
    try:
        (tmp / "data").mkdir()
        data_files = []
        for name, split in ds.items():
            shards = max(1, min(len(split), math.ceil(split.data.nbytes / shard_bytes)))
            for i in range(shards):
                part = split.shard(shards, i, contiguous=True)
                part.to_parquet(str(tmp / "data" / f"{name}-{i:05d}-of-{shards:05d}.parquet"))
            data_files.append({"split": name, "path": f"data/{name}-*.parquet"})
        (tmp / ilsvrc.DESCRIPTIONS_FILE).write_text(json.dumps(descriptions, indent=1) + "\n")
        if source:
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        (tmp / "README.md").write_text(dataset_card(ds, descriptions, source, data_files))
        share_tree(tmp)
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def dataset_card(ds: datasets.DatasetDict, descriptions: list[str], source: dict, data_files: list[dict]) -> str:
    """README.md: front matter that datasets and the Hub read (configs, features, splits), then the provenance, how
    to train on it, and the class table."""
    first = next(iter(ds.values()))
    names = first.features["label"].names
    info = {"features": first.features._to_yaml_list(),
            "splits": [{"name": n, "num_examples": len(s)} for n, s in ds.items()]}
    pretty = source.get("name") or "image classification data"
    imagenet_images = source.get("layout") == "ilsvrc-kaggle" and not source.get("generated")  # a demo tree: none
    data = DatasetCardData(pretty_name=pretty, task_categories=["image-classification"], tags=["imagenet-trainer"],
                           license="other" if imagenet_images else None,
                           configs=[{"config_name": "default", "data_files": data_files}], dataset_info=info)
    counts = ", ".join(f"{len(s):,} {n}" for n, s in ds.items())
    lines = ["---", data.to_yaml(), "---", "", f"# {pretty}", "",
             f"{len(names)} classes; {counts} images. Columns: `image` (the encoded JPEG), `label` (ClassLabel; "
             "names are the class ids, human names are in `class_descriptions.json` and the table below).", "",
             "## Source", ""]
    if source:
        layout = {"ilsvrc-kaggle": "Kaggle's ILSVRC-2012 tree (imagenet-object-localization-challenge)",
                  "class-folders": "one folder per class", "class-folders-split":
                  "one folder per class, validation split carved from train"}.get(source.get("layout"),
                                                                                  source.get("layout"))
        lines += [f"- **Data:** {source.get('name')}" + (" (the full ILSVRC-2012)" if source.get("ilsvrc2012_full")
                                                         else ""),
                  f"- **Layout converted:** {layout}", *([f"- **Images:** {source['generated']}"]
                                                          if source.get("generated") else []),
                  f"- **Counts at conversion:** " + ", ".join(f"{n:,} {k}" for k, n in source.get("counts", {}).items())]
        if source.get("val_fraction"):
            lines.append(f"- **Validation split:** {source['val_fraction']:.0%} of each class, seed "
                         f"{source.get('split_seed')}")
        if imagenet_images:
            lines += ["", "ImageNet's terms of access (image-net.org) allow non-commercial research use and forbid "
                      "redistributing the images: keep this repository private to those who accepted them."]
    else:
        lines.append("Converted with imagenet-trainer's preprocess.py (no source.json was recorded).")
    lines += ["", "## Use", "", "```bash", "accelerate launch train.py --dataset OWNER/NAME --model resnet50 ...",
              "```", "", "```python", "from imagenet_trainer.data import load_image_dataset",
              "from imagenet_trainer.ilsvrc import class_descriptions",
              'ds = load_image_dataset("OWNER/NAME")  # a DatasetDict; the same labels as the preprocess.py output',
              "names = class_descriptions(ds)  # human names in label order", "```", "",
              "## Classes", "", f"<details><summary>{len(names)} classes (index, id, name)</summary>", "",
              "| index | id | name |", "|---|---|---|"]
    lines += [f"| {i} | {n} | {str(d).replace('|', '/')} |" for i, (n, d) in enumerate(zip(names, descriptions))]
    return "\n".join([*lines, "", "</details>", ""])


def push_dataset(folder, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a folder written by ``export_parquet`` to the Hub dataset repo ``repo_id``; returns its URL. A failed
    upload raises a one-line OSError naming the push (the folder is left as it was)."""
    folder = Path(folder)
    if not (folder / "README.md").is_file() or not list((folder / "data").glob("*.parquet")):
        raise ValueError(f"{folder}: no README.md and data/*.parquet; write it with export_parquet first")
    if not (token or get_token()):
        raise ValueError(f"cannot push to '{repo_id}': no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=str(folder),
                          commit_message="Upload dataset converted with imagenet-trainer")
    except Exception as e:  # HTTP, network and auth errors come from several libraries; all end the same way
        from modeling.hub import push_failed  # torch and timm load only on this path

        # from None: the chained error's text is not ours to vet for secrets
        raise push_failed(e, f"{folder} to dataset '{repo_id}'", token,
                          "python -m imagenet_trainer.hub_dataset --push_to_hub") from None
    return str(url)


def main(argv=None) -> None:
    cfg = parse_config(HubDatasetConfig, argv, description=__doc__.split("\n")[0])
    try:
        folder = export_parquet(cfg.dataset, cfg.output_dir)
        print(f"wrote {folder}")
        if cfg.push_to_hub:
            print(f"pushed to {push_dataset(folder, cfg.push_to_hub, private=not cfg.public)}")
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}".splitlines()[0]) from None


if __name__ == "__main__":
    main(sys.argv[1:])
