"""Bring an export's remote code up to date with the installed project; its weights and card stay as saved.

An export of an architecture timm does not ship carries a copy of its family's file and a generated
``modeling_<family>.py`` (``modeling.remote_code``). A fix to either reaches new exports only: a folder saved by an
earlier version keeps the code it was saved with, e.g. a ``<Class>Backbone`` without ``config_class``, which
transformers' ``AutoBackbone.from_pretrained(..., trust_remote_code=True)`` refuses. ``refresh_remote_code``
rewrites those files (and ``auto_map`` in config.json) from the installed project where they differ, once the
installed code builds a network whose state-dict keys and shapes are those of the saved weights.
``modeling.push_to_hub`` does it before every upload; without a network:

    python -m modeling.refresh_code --folder runs/blocknet/final
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import safe_open

from imagenet_trainer.config import parse_config
from imagenet_trainer.runinfo import atomic_write_text

from .hub import CONFIG_NAME, WEIGHTS_NAME
from .remote_code import remote_code_files
from .transformers_saved import PREFIX


@dataclass(kw_only=True)
class RefreshCodeConfig:
    folder: str  # an export written by modeling.save_pretrained (train.py's output_dir/final)


def saved_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} from a safetensors header (no tensor is read); transformers' prefix removed."""
    with safe_open(str(weights), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if shapes and all(k.startswith(PREFIX) for k in shapes):
        shapes = {k[len(PREFIX):]: v for k, v in shapes.items()}
    return shapes


def installed_model(folder: Path, config: dict):
    """The network the installed code builds from ``folder``'s config.json, on the meta device (no memory, no
    init); ValueError when that code is missing or no longer fits the saved weights."""
    arch = str(config.get("architecture", ""))
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"architecture '{arch}' is not registered with timm: import the module that defines it "
                         f"(import modeling; a family file of your own: import it too)")
    if timm.models.model_entrypoint(arch.split(".")[0]).__module__.startswith("transformers_modules."):
        raise ValueError(f"'{arch}' is registered from a copy transformers loaded with trust_remote_code, not from "
                         f"the installed project: refresh in a fresh interpreter")
    with torch.device("meta"):
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=False)
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = saved_shapes(folder / WEIGHTS_NAME)
    if built != saved:
        differ = sorted({k for k, _ in set(built.items()) ^ set(saved.items())})
        raise ValueError(f"the installed '{arch}' no longer fits the saved weights (keys or shapes differ: "
                         f"{', '.join(differ[:3])}); its saved code is the one that builds them")
    return model


def refresh_remote_code(folder) -> list[str]:
    """Rewrite ``folder``'s remote-code files and ``auto_map`` from the installed project where they differ (each
    file replaced atomically); the names rewritten, [] when up to date or the export carries no code (timm's own
    architectures). ValueError (one line) when the installed code cannot build the saved network."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"no {CONFIG_NAME} and {WEIGHTS_NAME}: need a folder written by modeling.save_pretrained")
    config = json.loads(config_path.read_text())
    if "auto_map" not in config:
        return []
    files, auto_map = remote_code_files(installed_model(folder, config))
    changed = []
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            changed.append(name)
    if config["auto_map"] != auto_map:
        atomic_write_text(config_path, json.dumps({**config, "auto_map": auto_map}, indent=2) + "\n")
        changed.append(CONFIG_NAME)
    return changed


def refresh_before_upload(folder: Path) -> None:
    """What ``push_to_hub`` runs: one line when it rewrote files or could not check them; the upload goes on."""
    try:
        changed = refresh_remote_code(folder)
    except ValueError as e:
        print(f"{folder}: remote code uploaded as saved: {e}")
        return
    if changed:
        print(f"{folder}: rewrote {', '.join(changed)} from the installed imagenet-trainer (the code transformers' "
              f"trust_remote_code loads); weights and card unchanged")


def main(argv=None) -> None:
    cfg = parse_config(RefreshCodeConfig, argv, description=__doc__.split("\n")[0])
    try:
        changed = refresh_remote_code(cfg.folder)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --folder {cfg.folder}: {e}".splitlines()[0]) from None
    print(f"{cfg.folder}: rewrote {', '.join(changed)}" if changed else f"{cfg.folder}: remote code up to date")


if __name__ == "__main__":
    main(sys.argv[1:])
