"""Bring an export's remote code up to date with the installed project; its weights and card stay as saved.

An export of an architecture timm does not ship carries a copy of its family's file (the architecture of its
weights) and a generated ``modeling_<family>.py`` (``modeling.remote_code``). A fix to either reaches new exports
only: a folder saved by an earlier version keeps the code it was saved with, e.g. a ``<Class>Backbone`` without
``config_class``, which transformers' ``AutoBackbone.from_pretrained(..., trust_remote_code=True)`` refuses.
``refresh_remote_code`` rewrites ``modeling_<family>.py`` (and ``auto_map`` in config.json) from the installed project
where they differ, once the installed code builds a network whose state-dict keys and shapes are those of the saved
weights. The family file(s) are replaced only where the installed build computes what the saved copy computes from
those weights (``function_check``): a change that keeps every shape (an activation, a stride, a norm's eps) would
otherwise change what the published weights predict under the card's old accuracy. ``modeling.push_to_hub`` does
this before every upload; without a network:

    python -m modeling.refresh_code --folder runs/blocknet/final
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from imagenet_trainer.config import parse_config
from imagenet_trainer.runinfo import atomic_write_text

from ._registry import our_names
from .hub import CONFIG_NAME, WEIGHTS_NAME, unreadable
from .remote_code import remote_code_files
from .transformers_saved import PREFIX, wrapper_saved_state

# outputs of the installed build and of the saved copy count as equal within this fraction of their largest magnitude
# (float64: rounding differs by ~1e-13 between processes; a BatchNorm eps moved from 1e-5 to 1e-6 changes ~1e-6)
RTOL = 1e-8
CHECK_TIMEOUT_S = 600  # the saved copy's forward pass, in a fresh interpreter: importing torch and timm takes seconds
_PACKAGE = "saved_code"  # the name the saved copy is imported under: its `from .module import` lines need a package

# The saved copy's output in an interpreter of its own: its variants register with timm under the same names as the
# installed ones, so one process could not hold both. -I: neither this project nor the working folder is importable.
SAVED_COPY_OUTPUT = r"""
import importlib, sys
import timm, torch
from safetensors.torch import load_file, save_file
root, package, stem, folder, io, threads = sys.argv[1:]
torch.set_num_threads(int(threads))  # the caller's: the same summation order as its forward pass
sys.path.insert(0, root)
importlib.import_module(f"{package}.{stem}")  # registers the saved copy's variants with timm
model = timm.create_model(f"local-dir:{folder}", pretrained=False)
state = load_file(f"{folder}/WEIGHTS_NAME")
if state and all(k.startswith("PREFIX") for k in state):
    state = {k[len("PREFIX"):]: v for k, v in state.items()}
model.load_state_dict(state)
with torch.no_grad():
    out = model.double().eval()(load_file(io)["x"])
save_file({"out": out.contiguous()}, io)
""".replace("WEIGHTS_NAME", WEIGHTS_NAME).replace("PREFIX", PREFIX)


@dataclass(kw_only=True)
class RefreshCodeConfig:
    folder: str  # an export written by modeling.save_pretrained (train.py's output_dir/final)


def saved_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} from a safetensors header (no tensor is read); transformers' prefix removed. A header
    that does not parse (a cut or damaged copy) is a one-line ValueError naming the file."""
    try:
        with safe_open(str(weights), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise unreadable(weights, e) from None
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
    with our_names():
        if timm.models.model_entrypoint(arch.split(".")[0]).__module__.startswith("transformers_modules."):
            raise ValueError(f"'{arch}' is registered from a copy transformers loaded with trust_remote_code, not "
                             f"from the installed project: refresh in a fresh interpreter")
        with torch.device("meta"):
            model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=False)
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = saved_shapes(folder / WEIGHTS_NAME)
    if built != saved:
        differ = sorted({k for k, _ in set(built.items()) ^ set(saved.items())})
        raise ValueError(f"the installed '{arch}' no longer fits the saved weights (keys or shapes differ: "
                         f"{', '.join(differ[:3])}); its saved code is the one that builds them")
    return model


def saved_stem(config: dict) -> str | None:
    """The family file the export's own ``modeling_<family>.py`` imports (``<family>``), from its ``auto_map``."""
    entry = (config.get("auto_map") or {}).get("AutoModelForImageClassification", "")
    return entry.split(".")[0].removeprefix("modeling_") or None


def _family(files: dict[str, str]) -> dict[str, str]:
    # the family's own files; the wrapper is the one modeling_* file (remote_code refuses family files named so)
    return {name: text for name, text in files.items() if not name.startswith("modeling_")}


def _differs(folder: Path, files: dict[str, str]) -> bool:
    return any(not (folder / name).is_file() or (folder / name).read_text() != text for name, text in files.items())


class Unchecked(str):
    """A ``function_check`` reason that is no evidence either way: the saved copy or the installed build did not
    run (a package the copy imports is missing, a time-out), or the export holds no copy."""


def function_check(folder, config: dict | None = None) -> str | None:
    """None when the installed build of ``folder``'s architecture and the export's saved copy of its family source
    give the same outputs from the saved weights: one input of the export's input size (torch.randn, seed 0), float64,
    eval mode, the saved copy run in a fresh interpreter. Otherwise one line saying why not: an ``Unchecked`` when
    the comparison could not be made."""
    folder = Path(folder)
    config = config if config is not None else json.loads((folder / CONFIG_NAME).read_text())
    arch, stem = config.get("architecture"), saved_stem(config)
    if not stem or not (folder / f"{stem}.py").is_file():
        return Unchecked(f"the export holds no copy of its family source ({stem}.py) to compare with")
    size = tuple((config.get("pretrained_cfg") or {}).get("input_size") or (3, 224, 224))
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    on = f"a seeded {'x'.join(map(str, x.shape))} input"
    with tempfile.TemporaryDirectory(prefix="refresh-code-") as tmp:
        package = Path(tmp) / _PACKAGE
        package.mkdir()
        for path in folder.glob("*.py"):  # a copy: importing writes __pycache__/, which the export must not get
            if not path.name.startswith("modeling_"):
                shutil.copy(path, package / path.name)
        io = Path(tmp) / "io.safetensors"
        save_file({"x": x}, io)
        try:
            # not -I: torch and timm may be importable only through PYTHONPATH or the user site, which -I drops; the
            # installed project stays out of it all the same (the saved copy imports as its own package, from tmp)
            proc = subprocess.run([sys.executable, "-c", SAVED_COPY_OUTPUT, tmp, _PACKAGE, stem,
                                   str(folder.resolve()), str(io), str(torch.get_num_threads())],
                                  cwd=tmp, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Unchecked(f"its saved {stem}.py ran past {CHECK_TIMEOUT_S} s on {on}")
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:300]
            return Unchecked(f"its saved {stem}.py did not run on {on} in a fresh interpreter ({last})")
        saved = load_file(io)["out"]
    try:
        installed = installed_output(folder, x)
    except Exception as e:  # the installed build's own failure: no evidence that it computes the same
        return Unchecked(f"the installed '{arch}' did not run on {on} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300]})")
    if installed.shape != saved.shape:
        return (f"the installed '{arch}' gives outputs of shape {tuple(installed.shape)} from these weights, its saved "
                f"{stem}.py {tuple(saved.shape)}")
    scale = max(1.0, saved.abs().max().item())
    if not torch.allclose(installed, saved, rtol=RTOL, atol=RTOL * scale):
        return (f"the installed '{arch}' gives other outputs from these weights than its saved {stem}.py (max "
                f"|difference| {(installed - saved).abs().max().item():.3g} on {on})")
    return None


def installed_output(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """The installed build's output for ``x`` (float64) with ``folder``'s saved weights, on the CPU."""
    weights = folder / WEIGHTS_NAME
    state = wrapper_saved_state(weights) or load_file(weights)
    # its random init is overwritten; the caller's random stream stays
    with torch.random.fork_rng(devices=[]), our_names():
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=False)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.double().eval()(x)


def refresh(folder) -> tuple[list[str], str | None]:
    """``refresh_remote_code``'s work: (the names rewritten, one line when the family file(s) were kept as saved
    and why, else None)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"no {CONFIG_NAME} and {WEIGHTS_NAME}: need a folder written by modeling.save_pretrained")
    config = json.loads(config_path.read_text())
    one_channel = list((config.get("pretrained_cfg") or {}).get("input_size") or [3])[0] == 1
    if "auto_map" not in config and not one_channel:  # a timm architecture: no code, unless its processor is due
        return [], None
    model = installed_model(folder, config)
    files, auto_map = remote_code_files(model)
    stem, kept = saved_stem(config), None
    if _differs(folder, _family(files)) and stem and (folder / f"{stem}.py").is_file():
        why = function_check(folder, config)
        if why:
            saved = sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("modeling_"))
            kept = f"kept {' and '.join(saved)} as saved, the architecture of these weights: {why}"
            files = {name: text for name, text in files.items() if name not in _family(files)}
            # the installed wrapper imports `from .<family> import <Class>`: only where the saved copy has both
            same = f"modeling_{stem}.py" in files and re.search(
                rf"^class {re.escape(type(model).__name__)}\b", (folder / f"{stem}.py").read_text(), re.M)
            if not same:
                files, auto_map = {}, config["auto_map"]
                kept += f" (and modeling_{stem}.py and auto_map, which import it)"
    changed = []
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            changed.append(name)
    if config.get("auto_map", {}) != auto_map:
        atomic_write_text(config_path, json.dumps({**config, "auto_map": auto_map}, indent=2) + "\n")
        changed.append(CONFIG_NAME)
    return changed, kept


def refresh_remote_code(folder) -> list[str]:
    """Rewrite ``folder``'s remote-code files and ``auto_map`` from the installed project where they differ (each
    file replaced atomically), its family file(s) only where ``function_check`` passes (otherwise a warning says why);
    the names rewritten, [] when up to date or the export carries no code (timm's own architectures, but for the
    image processor of a one-channel network, which an export saved before it existed gets). ValueError (one
    line) when the installed code cannot build the saved network."""
    changed, kept = refresh(folder)
    if kept:
        warnings.warn(f"{folder}: {kept}", stacklevel=2)
    return changed


def installed_code_warning(folder) -> str | None:
    """One line when the installed code, which ``modeling.load_model`` (and ``validate.py --model FOLDER``) build
    ``folder``'s network from, computes other outputs from its weights than the export's own copy of the family
    source; None when the sources are the same or compute the same, or the export carries none. The sources are
    compared first (milliseconds); the outputs only where they differ (a fresh interpreter: seconds)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        stem = saved_stem(config)
        if not stem or not (folder / f"{stem}.py").is_file():
            return None
        files, _ = remote_code_files(installed_model(folder, config))
    except (OSError, ValueError):  # nothing to compare with, or the installed code cannot build it: loading says so
        return None
    if not _differs(folder, _family(files)):
        return None
    weights = (folder / WEIGHTS_NAME).stat()
    key = (str(folder.resolve()), weights.st_size, weights.st_mtime_ns,  # the same export, and the same two sources
           *(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.py"))),
           *(hashlib.sha256(text.encode()).hexdigest() for _, text in sorted(_family(files).items())))
    if key not in _WARNINGS:  # a check runs a fresh interpreter (seconds): once a process, not at every load
        why = function_check(folder, config)
        own = (f"load the export's own {stem}.py with transformers' AutoModelForImageClassification.from_pretrained("
               f"'{folder}', trust_remote_code=True), or install the imagenet-trainer that saved it")
        _WARNINGS[key] = why and (
            f"{folder}: the installed code differs from the export's {stem}.py and whether it computes the same could "
            f"not be checked ({why}); to be sure, {own}" if isinstance(why, Unchecked) else
            f"{folder}: the installed code may not be the architecture of these weights ({why}); {own}")
    return _WARNINGS[key]


_WARNINGS: dict[tuple, str | None] = {}  # installed_code_warning's verdicts in this process


def refresh_before_upload(folder: Path) -> None:
    """What ``push_to_hub`` runs: one line when it rewrote files, one when it kept the family file(s) or could not
    check them; the upload goes on."""
    try:
        changed, kept = refresh(folder)
    except ValueError as e:
        print(f"{folder}: remote code uploaded as saved: {e}")
        return
    if changed:
        print(f"{folder}: rewrote {', '.join(changed)} from the installed imagenet-trainer (the code transformers' "
              f"trust_remote_code loads); weights and card unchanged")
    if kept:
        print(f"{folder}: {kept}; it is uploaded as saved")


def main(argv=None) -> None:
    cfg = parse_config(RefreshCodeConfig, argv, description=__doc__.split("\n")[0])
    try:
        changed, kept = refresh(cfg.folder)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --folder {cfg.folder}: {e}".splitlines()[0]) from None
    if changed:
        print(f"{cfg.folder}: rewrote {', '.join(changed)}")
    if kept:
        print(f"{cfg.folder}: {kept}")
    if not changed and not kept:
        print(f"{cfg.folder}: remote code up to date")


if __name__ == "__main__":
    main(sys.argv[1:])
