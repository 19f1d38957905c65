"""Input-pipeline throughput per CPU core: torchvision's classic ImageFolder + PIL pipeline vs imagenet_trainer.data.

    python benchmarks/loader.py --data_dir DIR --dataset OUT [--dataset_small OUT2] [--num_images 1000]
        [--output loader.json] [--memory_check]
    python benchmarks/loader.py --dataset OUT [--num_workers N] [--feed_img_s 2800]     # self-test, no baseline
    python benchmarks/loader.py --data_dir DIR --dataset OUT --peers dali,ffcv [--peer_python PY]  # + DALI, FFCV

DIR is an ILSVRC tree in Kaggle's layout (DIR/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG), OUT its preprocess.py output
and OUT2 (optional) a preprocess.py --shorter_side output of the same tree. Both sides read the same train images
(matched by preprocess.py's image_id column), from the page cache (one untimed pass first), in one process on one
thread with no DataLoader workers, so the numbers are images/s per core; --num_workers N runs both sides through N
DataLoader worker processes instead (the all-cores figure; each worker uses one thread; ours' train batches go
through the reused slots of data.ring, as train.py's do, and are counted without being read, as a GPU's copy reads
them by DMA).

  train   baseline: ImageFolder -> PIL RandomResizedCrop(224) -> RandomHorizontalFlip -> ToTensor -> Normalize ->
          default_collate;  ours: TrainSet (Arrow bytes -> RRC box from the header -> DCT-scaled decode of the
          tiles under the box (preprocess.py's default --restart_tile) -> uint8 crop-resize -> flip) -> collate.
          Normalisation is the device's job in ours (train.py), so it is not here.
  eval    baseline: ImageFolder -> Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize;  ours: EvalSet.
  *_small ours on OUT2 against the same baseline on the original files (low-resolution storage, as FFCV does).

Self-test (no --data_dir): only our pipeline, on your own preprocess.py output and machine: img/s, img/s per core
and the cores it takes to feed --feed_img_s (what your accelerator trains at), i.e. the --num_workers to give
train.py before the GPU waits on the loader; --profile adds the CPU time of each step of a train sample on that
machine (decode, resize, ...), to tell a slow core from a slow step.

Targets (issue "a data path that never starves the GPU"): train >= 2.5x, train_small >= 4x, eval >= 2x.
One-core runs also time entropy decoding of the whole original files alone (simplejpeg at 1/8 scale): its ratio to
the baseline bounds the train ratio of any pipeline that decodes whole files (on dense, ImageNet-sized files it is
~2.7x); decoding only the tiles under the crop is how ours goes past it. --coding baseline / progressive restricts
the comparison to sequential / progressive source JPEGs (progressive ones decode ~2x slower, ours re-codes them).
Passes are interleaved and repeated (--repeats); the median is reported, as other jobs may share the machine.
--peers dali,ffcv: NVIDIA DALI's and FFCV's ImageNet pipelines on the same files in the same run, interleaved with
ours, train at --image_size and --peer_size (FFCV's training resolution) and eval (benchmarks/loader_peers.py says
which settings). Each is timed only where it imports in --peer_python (default: this interpreter); one that does not
is reported as "not installed". Install them (into their own environment if they want other versions of this
project's pins): pip install nvidia-dali-cuda120; apt-get install libopencv-dev libturbojpeg0-dev pkg-config, then
pip install ffcv. One core: the whole run is pinned to one CPU (DALI num_threads=1, FFCV num_workers=1, so their
helper threads share that core); --num_workers N: N threads each, on all CPUs.
--memory_check: RSS of one DataLoader worker after reading 1024 rows spread over a 10k-row and a 100k-row dataset
(rows repeated from OUT): anonymous memory must not grow with the row count (the rows stay memory-mapped).

Longer than 400 lines: one benchmark, its two sides, its peers' runner and its optional checks, in the file its
report comes from; benchmarks/loader_peers.py is what runs inside a peer's interpreter.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # as train.py's first lines: the workers' fork server imports beside this process
    from imagenet_trainer import worker_processes

    worker_processes.start_early(sys.argv[1:], default_workers=0)  # 0: --num_workers' default here

import copy
import functools
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata

import datasets
import numpy as np
import simplejpeg
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from imagenet_trainer.config import parse_config  # noqa: E402
from imagenet_trainer import data as pipeline_steps  # noqa: E402
from imagenet_trainer.data import decode  # noqa: E402
from imagenet_trainer import jpeg_markers  # noqa: E402
from imagenet_trainer.data import EvalSet, Rows, TrainSet, collate, load_image_dataset  # noqa: E402
from imagenet_trainer.data.ring import BatchRing, RingBatch, RingCollate  # noqa: E402
from imagenet_trainer.loader_setup import PREFETCH_FACTOR, RING_SLOTS, SHM, shm_need  # noqa: E402
from imagenet_trainer.worker_processes import worker_context  # noqa: E402
from imagenet_trainer.runinfo import atomic_write_text  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGETS = {"train": 2.5, "train_small": 4.0, "eval": 2.0, "eval_small": 2.0}
PEERS_SCRIPT = Path(__file__).resolve().parent / "loader_peers.py"
PEER_NAMES = {"dali": ["dali"], "ffcv": ["ffcv_jpg", "ffcv_imagenet"]}  # --peers word -> settings timed
PEER_INSTALL = {"dali": "pip install nvidia-dali-cuda120",
                "ffcv": "apt-get install libopencv-dev libturbojpeg0-dev pkg-config; pip install ffcv"}
PEER_SETTINGS = {
    "dali": "fn.decoders.image_random_crop (CPU, ROI decode, default area/aspect) + fn.resize + crop_mirror_normalize"
            " uint8, original files",
    "ffcv_jpg": "FFCV JPEG mode (write_mode=jpg, full resolution, quality 90), RandomResizedCropRGBImageDecoder",
    "ffcv_imagenet": "FFCV ImageNet writer settings (max_resolution 500, proportion, compress_probability 0.5 "
                     "= half raw pixels, quality 90), RandomResizedCropRGBImageDecoder",
}
PEER_TARGETS = {("ffcv_imagenet", "train_192"): 1.2, ("dali", "train"): 2.5}  # ours / peer, one core
PROFILE_ROWS = 512  # self-test --profile: samples profiled, ~1-2 s of one core (each is checked against TrainSet)


@dataclass(kw_only=True)  # kw_only: required fields stand among fields with defaults
class LoaderBenchConfig:
    data_dir: str = ""  # ILSVRC tree (Kaggle layout); the baseline reads its train JPEG files. Empty: self-test
    dataset: str  # preprocess.py output of --data_dir (images stored as they were)
    dataset_small: str = ""  # optional preprocess.py --shorter_side output of the same tree
    output: str = ""  # JSON results path (written atomically); empty: print only
    num_images: int = 1000  # train images per timed pass, a seeded random subset, the same for every pipeline
    batch_size: int = 64  # images per collated batch
    image_size: int = 224  # px, output side of both pipelines
    repeats: int = 3  # timed passes per pipeline (interleaved); the median is reported
    seed: int = 0  # subset and augmentation seed
    memory_check: bool = False  # also measure a DataLoader worker's RSS over 10k vs 100k rows
    num_workers: int = 0  # 0: in-process, one core (the per-core figure); N: N DataLoader workers (all cores)
    coding: str = "all"  # source JPEGs compared: all, baseline (sequential) or progressive
    feed_img_s: float = 2800.0  # self-test: img/s the accelerator trains at (ResNet-50, one H100: ~2,800)
    train_only: bool = False  # self-test: time the train pipeline only, what feeding an accelerator takes (eval
    # decodes whole images, slower than a train sample's crop, for figures a GPU check does not use)
    peers: str = ""  # comma list of dali, ffcv (its JPEG mode and its ImageNet settings): timed beside ours
    peer_python: str = ""  # interpreter that has the peers installed (e.g. their own venv); empty: this one
    peer_size: int = 192  # px, with --peers train is also timed at it: FFCV's ResNet recipes train at 160-192 px
    profile: bool = False  # self-test: also time each step of a train sample at --image_size, in-process after the
    # timed passes (train_profile_us; at most PROFILE_ROWS samples): where this machine's CPU spends a sample


def machine(num_workers: int) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{model}, " + (f"{num_workers} workers" if num_workers else "1 thread")


def is_progressive(path) -> bool:
    return bool(Image.open(path).info.get("progressive"))


def rows_by_stem(split: datasets.Dataset) -> dict[str, int]:
    if "image_id" not in split.column_names:
        raise SystemExit("error: --dataset has no image_id column; give a preprocess.py output so both pipelines "
                         "read the same images")
    return {stem: i for i, stem in enumerate(split.with_format("arrow")["image_id"].to_pylist())}


def images_per_s(loader) -> tuple[float, float]:
    """(img/s, CPU us of this process per image: the figure that other jobs on the machine disturb least)."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for batch in loader:
        if isinstance(batch, RingBatch):  # a slot of the ring: counted and freed, as the GPU copy would free it
            count += len(batch.labels)
            batch.release()
        else:
            count += batch[0].shape[0]
    return count / (time.perf_counter() - start), 1e6 * (time.process_time() - cpu) / count


def entropy_decode_img_s(encoded: list[bytes], repeats: int) -> float:
    """Images/s of decoding at 1/8 scale, which leaves libjpeg-turbo little but the Huffman (entropy) decoding of
    every block: a cost that every pipeline decoding whole files pays, the baseline and ours included. Its ratio to
    the baseline bounds the ratio such a pipeline can reach on these files (median of ``repeats`` passes, 1 thread)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in encoded:
            simplejpeg.decode_jpeg(data, min_height=1, min_width=1, strict=False)
        rates.append(len(encoded) / (time.perf_counter() - start))
    return statistics.median(rates)


def batches(keys: list, size: int) -> list[list]:
    return [keys[i:i + size] for i in range(0, len(keys), size)]


class EpochBatches:
    """Batches of dataset keys; TrainSet's keys are (epoch, index), with ``epoch`` set before each pass, so one
    persistent DataLoader draws new crops every pass."""

    def __init__(self, rows: list[int], batch_size: int, with_epoch: bool):
        self.batches, self.with_epoch, self.epoch = batches(rows, batch_size), with_epoch, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield [(self.epoch, r) for r in batch] if self.with_epoch else batch


def loader_kw(num_workers: int) -> dict:
    # workers as train.py keeps them: persistent (started once, not per epoch), 4 batches ahead each
    return dict(num_workers=num_workers, persistent_workers=num_workers > 0,
                prefetch_factor=PREFETCH_FACTOR if num_workers else None)


def baseline_loader(folder, indices: list[int], transform, batch_size: int, num_workers: int):
    folder = copy.copy(folder)  # one directory scan for all passes (ImageNet's takes a minute)
    folder.transform = transform
    return torch.utils.data.DataLoader(torch.utils.data.Subset(folder, indices), batch_size=batch_size,
                                       **loader_kw(num_workers))


def ours_loader(dataset, rows: list[int], batch_size: int, num_workers: int, with_epoch: bool):
    """Our loader as train.py builds it: with workers, a training set's batches go through the ring's reused slots
    (data.ring; evaluation's through fresh shared memory)."""
    ring, context = None, worker_context() if num_workers else None
    if num_workers and isinstance(dataset, TrainSet):
        ring = BatchRing(num_workers, RING_SLOTS, (batch_size, dataset.image_size, dataset.image_size, 3),
                         context=context)
    return torch.utils.data.DataLoader(dataset, batch_sampler=EpochBatches(rows, batch_size, with_epoch),
                                       collate_fn=RingCollate(ring) if ring else collate,
                                       multiprocessing_context=context, **loader_kw(num_workers))


def warm_rows(splits: dict, rows: dict) -> dict:
    """Touch every picked row once (page cache: the passes then measure CPU work only); returns the row readers."""
    views = {name: Rows(split) for name, split in splits.items()}
    for name, view in views.items():
        for r in rows[name]:
            bytes(view[r][0])
    return views


def warm_files(paths) -> None:
    """Read the files into the page cache. Before every pass, not once: a kernel that reclaims idle pages (DAMON's
    pageout scheme, a memory cgroup's limit) would otherwise put disk reads into whichever pass comes after a long
    one (measured here: pages idle for 80 s came back through ~190 major faults per 640 rows)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def measure(runs: dict, cfg: LoaderBenchConfig, peers: list | None = None, warm=lambda: None) -> tuple[dict, dict]:
    """({pipeline: {side: [img/s per pass]}}, the same of CPU us per image); the passes of all pipelines are
    interleaved, ``cfg.repeats`` rounds, each round ending with one pass of every peer (``Peer``); ``warm()``
    (untimed) puts every side's files back in the page cache before each pass."""
    measured = {pipeline: {side: [] for side in sides} for pipeline, sides in runs.items()}
    cpu = copy.deepcopy(measured)
    loaders = {}  # one DataLoader per pipeline and side; with workers, started by an untimed first pass
    for rep in range(cfg.repeats):
        for pipeline, sides in runs.items():
            for side, make in sides.items():
                torch.manual_seed(cfg.seed + rep)  # the baseline's RandomResizedCrop draws from it (in-process)
                if (pipeline, side) not in loaders:
                    loaders[pipeline, side] = make()
                    if cfg.num_workers:
                        images_per_s(loaders[pipeline, side])  # worker start-up: once, as in train.py
                loader = loaders[pipeline, side]
                if isinstance(loader.batch_sampler, EpochBatches):
                    loader.batch_sampler.epoch = rep + 1
                warm()
                img_s, cpu_us = images_per_s(loader)
                measured[pipeline][side].append(img_s)
                cpu[pipeline][side].append(cpu_us)
                print(f"pass {rep + 1}/{cfg.repeats} {pipeline:12s} {side:13s} {img_s:8.1f} img/s", flush=True)
        for peer in peers or []:
            warm()
            for pipeline, r in peer.measure(rep).items():
                if pipeline in measured:
                    measured[pipeline].setdefault(peer.name, []).append(r["img_s"])
                    cpu[pipeline].setdefault(peer.name, []).append(r["cpu_us"])
                    print(f"pass {rep + 1}/{cfg.repeats} {pipeline:12s} {peer.name:13s} {r['img_s']:8.1f} img/s",
                          flush=True)
    loaders.clear()  # persistent workers stop here
    return measured, cpu


class Peer:
    """One peer setting (benchmarks/loader_peers.py) run in a subprocess of ``python``: every pass is a fresh
    process (FFCV's loader threads can keep an interpreter alive), pinned to ``cpus`` when given."""

    def __init__(self, name: str, python: str, files: list[str], labels: list[int], work_dir: str,
                 cfg: LoaderBenchConfig, cpus: list[int] | None):
        self.name, self.python, self.status = name, python, "measured"
        self.request = {"peer": name, "files": files, "labels": labels, "work_dir": work_dir,
                        "train_sizes": sorted({cfg.image_size, cfg.peer_size}, key=lambda s: s != cfg.image_size),
                        "eval_size": cfg.image_size, "batch_size": cfg.batch_size,
                        "threads": max(1, cfg.num_workers), "cpus": cpus, "seed": cfg.seed}
        self.version = self.stored_bytes = None

    def ask(self, action: str, **extra) -> dict:
        try:
            proc = subprocess.run([self.python, str(PEERS_SCRIPT)], capture_output=True, text=True, timeout=3600,
                                  input=json.dumps({**self.request, **extra, "action": action}))
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        return reply

    def start(self) -> bool:
        """Version check, then the peer's own preprocessing (FFCV writes its .beton); False if it cannot run."""
        reply = self.ask("version")
        if "missing" in reply or "error" in reply:
            self.status = "not installed"
            return False
        self.version = reply["version"]
        reply = self.ask("prepare")
        if "error" in reply:
            self.status = f"failed: {reply['error']}"[:300]
            return False
        self.stored_bytes = reply["stored_bytes"]
        return True

    def measure(self, rep: int) -> dict:
        reply = self.ask("measure", seed=self.request["seed"] + rep)
        if "error" in reply:
            self.status = f"failed: {reply['error']}"[:300]
            return {}
        return reply


def start_peers(cfg: LoaderBenchConfig, files: list[str], labels: list[int], work_dir: str) -> list[Peer]:
    python = cfg.peer_python or sys.executable
    cpus = [max(os.sched_getaffinity(0))] if not cfg.num_workers and hasattr(os, "sched_getaffinity") else None
    peers = [Peer(name, python, files, labels, work_dir, cfg, cpus)
             for word in cfg.peers.split(",") for name in PEER_NAMES[word.strip()]]
    for peer in peers:
        print(f"peer {peer.name}: {'ready' if peer.start() else peer.status}", flush=True)
    return peers


def peers_report(peers: list[Peer], measured: dict, cpu: dict, results: dict, num_images: int) -> dict:
    report = {}
    for peer in peers:
        word = next(w for w, names in PEER_NAMES.items() if peer.name in names)
        entry = {"status": peer.status, "setting": PEER_SETTINGS[peer.name], "install": PEER_INSTALL[word]}
        if peer.status == "measured":
            entry.update(version=peer.version, mean_stored_bytes=round(peer.stored_bytes / num_images),
                         pipelines={})
            for pipeline, sides in measured.items():
                if peer.name in sides:
                    img_s = round(statistics.median(sides[peer.name]), 1)
                    entry["pipelines"][pipeline] = {
                        "img_s": img_s, "passes": [round(v, 1) for v in sides[peer.name]],
                        "cpu_us": round(statistics.median(cpu[pipeline][peer.name])),
                        "ours_over_peer": round(results[pipeline]["ours_img_s"] / img_s, 2),
                        "vs_baseline": round(img_s / results[pipeline]["baseline_img_s"], 2)}
        report[peer.name] = entry
    return report


def ours_runs(splits: dict, rows: dict, cfg: LoaderBenchConfig) -> dict:
    runs = {}
    for name, split in splits.items():
        for size in train_sizes(cfg):
            runs[train_key(size, cfg) + name] = {
                "ours": functools.partial(ours_loader, TrainSet(split, size, cfg.seed), rows[name], cfg.batch_size,
                                          cfg.num_workers, with_epoch=True)}
        runs[f"eval{name}"] = {"ours": functools.partial(ours_loader, EvalSet(split, cfg.image_size), rows[name],
                                                         cfg.batch_size, cfg.num_workers, with_epoch=False)}
    return runs


def train_sizes(cfg: LoaderBenchConfig) -> list[int]:
    return [cfg.image_size] + ([cfg.peer_size] if cfg.peers and cfg.peer_size != cfg.image_size else [])


def train_key(size: int, cfg: LoaderBenchConfig) -> str:
    return "train" if size == cfg.image_size else f"train_{size}"


def self_test(splits: dict, cfg: LoaderBenchConfig) -> None:
    """--dataset without --data_dir: our pipeline on the user's own data (no baseline), per core, and the cores it
    takes to feed --feed_img_s: will this machine's loader keep the accelerator busy?"""
    rng = np.random.default_rng(cfg.seed)
    rows = {name: sorted(rng.choice(len(split), size=min(cfg.num_images, len(split)), replace=False).tolist())
            for name, split in splits.items()}
    warm_rows(splits, rows)
    runs = {name: run for name, run in ours_runs(splits, rows, cfg).items()
            if not (cfg.train_only and name.startswith("eval"))}
    measured, _ = measure(runs, cfg)
    cores = max(1, cfg.num_workers)
    results = {}
    for pipeline, sides in measured.items():
        img_s = statistics.median(sides["ours"])
        results[pipeline] = {"ours_img_s": round(img_s, 1), "img_s_per_core": round(img_s / cores, 1),
                             "cores_to_feed": round(cfg.feed_img_s / (img_s / cores), 1),
                             "ours_passes": [round(v, 1) for v in sides["ours"]]}
    report = {"ours_img_s": results["train"]["ours_img_s"], "machine": machine(cfg.num_workers),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD torch's kernels run (resize)
              "num_images": len(rows[""]), "feed_img_s": cfg.feed_img_s, "config": asdict(cfg), "pipelines": results}
    if cfg.profile:
        report["train_profile_us"] = {cfg.image_size: train_profile(splits[""], rows[""][:PROFILE_ROWS],
                                                                    cfg.image_size, cfg)}
    print(f"\n{'pipeline':12s} {'img/s':>9s} {'per core':>9s} {f'cores to feed {cfg.feed_img_s:g} img/s':>27s}"
          f"  machine")
    for pipeline, r in results.items():
        print(f"{pipeline:12s} {r['ours_img_s']:9.1f} {r['img_s_per_core']:9.1f} {r['cores_to_feed']:27.1f}  "
              f"{report['machine']}")
    print_profiles(report)
    if cfg.output:
        atomic_write_text(cfg.output, json.dumps(report, indent=2))
        print(f"wrote {cfg.output}")


def main(argv=None) -> None:
    cfg = parse_config(LoaderBenchConfig, argv, description=__doc__.split("\n")[0])
    check_flags(cfg)
    torch.set_num_threads(1)
    splits = load_splits(cfg)
    check_shm_room(cfg, splits)
    if not cfg.data_dir:
        return self_test(splits, cfg)
    folder, picked, rows = pick_files(cfg, splits)
    files = [folder.samples[i][0] for i in picked]
    views = warm_rows(splits, rows)
    runs = pipelines(cfg, folder, picked, splits, rows)
    peers, work_dir = [], None
    if cfg.peers:
        if not cfg.num_workers and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core for every side, peers included
        work_dir = tempfile.mkdtemp(prefix="loader_peers_")
        peers = start_peers(cfg, files, [folder.samples[i][1] for i in picked], work_dir)
    try:
        measured, cpu = measure(runs, cfg, [p for p in peers if p.status == "measured"],
                                functools.partial(warm_inputs, splits, rows, files, work_dir))
    finally:
        if work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    order = [train_key(s, cfg) for s in train_sizes(cfg)] + ["eval"]
    results = pipeline_results(measured, cpu, order, cfg)
    report = make_report(cfg, results, files, {name: [len(views[name][r][0]) for r in rows[name]] for name in splits})
    add_checks(report, cfg, splits, rows, files, peers, (measured, cpu, results))
    print_report(report, results, order, cfg)
    if cfg.output:
        atomic_write_text(cfg.output, json.dumps(report, indent=2))
        print(f"wrote {cfg.output}")


def check_flags(cfg: LoaderBenchConfig) -> None:
    if cfg.coding not in ("all", "baseline", "progressive"):
        raise SystemExit(f"error: --coding {cfg.coding}: use all, baseline or progressive")
    unknown = [w for w in cfg.peers.split(",") if cfg.peers and w.strip() not in PEER_NAMES]
    if unknown:
        raise SystemExit(f"error: --peers {cfg.peers}: unknown {', '.join(unknown)}; use {', '.join(PEER_NAMES)}")
    if cfg.peers and not cfg.data_dir:
        raise SystemExit("error: --peers needs --data_dir (the peers read the original files)")
    if cfg.train_only and cfg.data_dir:
        raise SystemExit("error: --train_only is for the self-test: leave out --data_dir (the comparison times both)")
    if cfg.profile and cfg.data_dir:
        raise SystemExit("error: --profile is for the self-test: leave out --data_dir (a one-core comparison with "
                         "--peers profiles ours at each train size)")


def check_shm_room(cfg: LoaderBenchConfig, splits: dict, shm: str = SHM) -> None:
    """Refuse to start when ``shm`` cannot hold what the workers of every loader keep there at once (each loader's
    workers persist through the whole run): a container's 64 MB default would end the run in a bus error."""
    if not cfg.num_workers or not os.path.isdir(shm):
        return
    pixels = cfg.batch_size * 3  # uint8 values per px: ours' batches; torchvision's are float32 (4 bytes a value)
    need = 0
    for _ in splits:  # ours: each train size through the ring, eval without (data.ring)
        need += sum(shm_need(cfg.num_workers, pixels * s * s, RING_SLOTS) for s in train_sizes(cfg))
        need += 0 if cfg.train_only else shm_need(cfg.num_workers, pixels * cfg.image_size ** 2, 0)
    if cfg.data_dir:  # the baseline's train sizes and eval, on the full-size files only
        need += sum(shm_need(cfg.num_workers, 4 * pixels * s * s, 0) for s in [*train_sizes(cfg), cfg.image_size])
    free = shutil.disk_usage(shm).free
    if free < need:
        raise SystemExit(f"error: {shm} has {free / 2**20:.1f} MiB free; the loaders ({cfg.num_workers} workers "
                         f"each) need {need / 2**20:.1f} MiB there in all at --batch_size {cfg.batch_size}: give the "
                         f"container more (docker run --shm-size={need // 2**30 + 1}g) or lower --num_workers / "
                         "--batch_size")


def load_splits(cfg: LoaderBenchConfig) -> dict:
    """{"": --dataset's train split, "_small": --dataset_small's when given}."""
    splits = {}
    for name, flag in (("", "dataset"), ("_small", "dataset_small")):
        if getattr(cfg, flag):
            try:
                splits[name] = load_image_dataset(getattr(cfg, flag))["train"]
            except (ValueError, KeyError) as e:
                raise SystemExit(f"error: --{flag} {getattr(cfg, flag)}: {e}") from None
    return splits


def pick_files(cfg: LoaderBenchConfig, splits: dict):
    """(ImageFolder of --data_dir's train files, the picked indices in it, {split: the picked files' rows}): the same
    files on both sides, ImageFolder's sample list matched to the dataset rows by file stem."""
    train_dir = Path(cfg.data_dir).expanduser() / "ILSVRC/Data/CLS-LOC/train"
    if not train_dir.is_dir():
        raise SystemExit(f"error: --data_dir {cfg.data_dir}: no ILSVRC/Data/CLS-LOC/train folder in it")
    folder = torchvision.datasets.ImageFolder(str(train_dir))
    files = folder.samples
    stems = {name: rows_by_stem(split) for name, split in splits.items()}
    usable = [i for i, (path, _) in enumerate(files) if all(Path(path).stem in s for s in stems.values())
              and (cfg.coding == "all" or cfg.coding == ("progressive" if is_progressive(path) else "baseline"))]
    if not usable:
        raise SystemExit(f"error: no {'' if cfg.coding == 'all' else cfg.coding + ' '}train file of --data_dir is "
                         "in --dataset (matched by image_id)")
    rng = np.random.default_rng(cfg.seed)
    picked = sorted(rng.choice(usable, size=min(cfg.num_images, len(usable)), replace=False).tolist())
    return folder, picked, {name: [s[Path(files[i][0]).stem] for i in picked] for name, s in stems.items()}


def pipelines(cfg: LoaderBenchConfig, folder, picked: list[int], splits: dict, rows: dict) -> dict:
    """{pipeline: {"baseline": make its loader, "ours": make ours}}: each train size and eval, and the _small ones."""
    size = cfg.image_size
    eval_tf = T.Compose([T.Resize(math.floor(size / 0.875)), T.CenterCrop(size), T.ToTensor(),
                         T.Normalize(MEAN, STD)])
    our_loaders = ours_runs(splits, rows, cfg)
    runs = {}
    for s in train_sizes(cfg):
        train_tf = T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
        runs[train_key(s, cfg)] = {"baseline": functools.partial(baseline_loader, folder, picked, train_tf,
                                                                 cfg.batch_size, cfg.num_workers),
                                   **our_loaders.pop(train_key(s, cfg))}
    runs["eval"] = {"baseline": functools.partial(baseline_loader, folder, picked, eval_tf, cfg.batch_size,
                                                  cfg.num_workers), **our_loaders.pop("eval")}
    runs.update(our_loaders)  # the _small pipelines
    return runs


def warm_inputs(splits: dict, rows: dict, files: list[str], work_dir: str | None) -> None:
    """The picked original files and Arrow rows, and the peers' own files (FFCV's .beton), into the page cache."""
    warm_rows(splits, rows)
    warm_files(files + ([p for p in Path(work_dir).rglob("*") if p.is_file()] if work_dir else []))


def pipeline_results(measured: dict, cpu: dict, order: list[str], cfg: LoaderBenchConfig) -> dict:
    """Per pipeline: the medians of both sides' img/s, their ratio against its target, and every pass."""
    results = {}
    for pipeline in [p + small for small in ("", "_small") for p in order if p + small in measured]:
        base_key = pipeline.removesuffix("_small")
        # the ratio of the figures as reported, so the JSON checks out against itself at every rounding boundary
        baseline_img_s = round(statistics.median(measured[base_key]["baseline"]), 1)
        ours_img_s = round(statistics.median(measured[pipeline]["ours"]), 1)
        kind = base_key.split("_")[0] + pipeline.removeprefix(base_key)  # train_192_small -> train_small
        results[pipeline] = {"baseline_img_s": baseline_img_s, "ours_img_s": ours_img_s,
                             "ratio": round(ours_img_s / baseline_img_s, 2), "target_ratio": TARGETS[kind],
                             "baseline_passes": [round(v, 1) for v in measured[base_key]["baseline"]],
                             "ours_passes": [round(v, 1) for v in measured[pipeline]["ours"]]}
        if not cfg.num_workers:
            results[pipeline]["cpu_us"] = {"baseline": round(statistics.median(cpu[base_key]["baseline"])),
                                           "ours": round(statistics.median(cpu[pipeline]["ours"]))}
    return results


def make_report(cfg: LoaderBenchConfig, results: dict, files: list[str], stored_bytes: dict) -> dict:
    """The JSON report's figures and the conditions they were measured in (`stored_bytes`: {split: row sizes})."""
    return {**{k: results["train"][k] for k in ("baseline_img_s", "ours_img_s", "ratio")},
            "machine": machine(cfg.num_workers), "num_images": len(files), "config": asdict(cfg),
            "pipelines": results,
            "progressive_share": round(statistics.mean(is_progressive(f) for f in files), 3),
            "mean_file_bytes": round(statistics.mean(Path(f).stat().st_size for f in files)),
            "mean_stored_bytes": {f"dataset{k}": round(statistics.mean(v)) for k, v in stored_bytes.items()},
            "versions": {p: metadata.version(p) for p in ("torch", "torchvision", "pillow", "simplejpeg",
                                                          "datasets", "numpy")}}


def add_checks(report: dict, cfg: LoaderBenchConfig, splits: dict, rows: dict, files: list[str], peers: list,
               timings: tuple) -> None:
    """The report's optional parts: the entropy-decoding bound, the peers, collate, profile and memory checks
    (`timings`: measure's (measured, cpu) and pipeline_results)."""
    measured, cpu, results = timings
    if not cfg.num_workers:
        floor = entropy_decode_img_s([Path(f).read_bytes() for f in files], cfg.repeats)
        report["entropy_decode"] = {"img_s": round(floor, 1),
                                    "bound_ratio": round(floor / results["train"]["baseline_img_s"], 2)}
    if cfg.peers:
        report["peers"] = peers_report(peers, measured, cpu, results, len(files))
        report["peer_targets"] = {
            f"ours_over_{name}_{pipeline}": {"ratio": report["peers"][name]["pipelines"][pipeline]["ours_over_peer"],
                                             "target": target}
            for (name, pipeline), target in PEER_TARGETS.items()
            if pipeline in report["peers"].get(name, {}).get("pipelines", {})}
        report["load_average"] = list(os.getloadavg())  # other jobs on the machine disturb wall-clock figures
    if cfg.num_workers:
        report["collate_cpu_us"] = collate_check(splits[""], rows[""], cfg)
    elif cfg.peers:
        report["train_profile_us"] = {s: train_profile(splits[""], rows[""], s, cfg) for s in train_sizes(cfg)}
    if cfg.memory_check:
        report["memory_check"] = memory_check(splits[""], cfg)


def print_report(report: dict, results: dict, order: list[str], cfg: LoaderBenchConfig) -> None:
    print(f"\n{'pipeline':12s} {'baseline img/s':>15s} {'ours img/s':>11s} {'ratio':>6s} {'target':>7s}  machine")
    for pipeline, r in results.items():
        print(f"{pipeline:12s} {r['baseline_img_s']:15.1f} {r['ours_img_s']:11.1f} {r['ratio']:6.2f} "
              f"{r['target_ratio']:6.1f}x  {report['machine']}")
    if cfg.peers:
        print_peers(report, order)
    if "entropy_decode" in report:
        e = report["entropy_decode"]
        print(f"entropy decoding alone (1/8-scale decode): {e['img_s']:.1f} img/s = {e['bound_ratio']:.2f}x the "
              "train baseline: the most a pipeline decoding whole files can reach on these files")
    print_profiles(report)
    if "collate_cpu_us" in report:
        c = report["collate_cpu_us"]
        print(f"collate CPU per image: {c['in_process']:.1f} us in-process, {c['worker']:.1f} us in a worker (fresh "
              "shared memory per batch)")
    if cfg.memory_check:
        for rows_count, m in report["memory_check"]["worker"].items():
            print(f"worker RSS over {rows_count} rows: anon {m['RssAnon_MiB']} MiB, file {m['RssFile_MiB']} MiB")


def print_peers(report: dict, order: list[str]) -> None:
    results = report["pipelines"]
    print(f"\n{'pipeline (img/s, vs torchvision)':42s}" + "".join(f"{p:>20s}" for p in order))
    print(f"{'torchvision ImageFolder + PIL':42s}" + "".join(f"{results[p]['baseline_img_s']:20.1f}" for p in order))
    print(f"{'ours':42s}" + "".join(f"{results[p]['ours_img_s']:12.1f} {results[p]['ratio']:6.2f}x" for p in order))
    for name, peer in report["peers"].items():
        label = f"{name} ({peer['version']})" if "version" in peer else name
        if peer["status"] != "measured":
            print(f"{label:42s} {peer['status']}" + (f" ({peer['install']})" if peer["status"] == "not installed"
                                                     else ""))
            continue
        cells = [peer["pipelines"].get(p) for p in order]
        print(f"{label:42s}" + "".join(f"{c['img_s']:12.1f} {c['vs_baseline']:6.2f}x" if c else f"{'-':>20s}"
                                       for c in cells))
    for key, t in report["peer_targets"].items():
        print(f"{key}: {t['ratio']:.2f}x (target >= {t['target']}x)")


def _proc_status_mib() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[f"{key}_MiB"] = round(int(value.split()[0]) / 1024, 1)
    return fields


def print_profiles(report: dict) -> None:
    for s, profile in report.get("train_profile_us", {}).items():
        print(f"\nours, train at {s} px, CPU us per sample:")
        for step, us in profile.items():
            print(f"  {step:52s} {us:8.1f}")


def _collate_with_status(batch):
    x, y = collate(batch)
    return x, y, _proc_status_mib()


def train_profile(split: datasets.Dataset, rows: list[int], size: int, cfg: LoaderBenchConfig) -> dict:
    """CPU us per sample of each step of TrainSet.__getitem__ at ``size`` px (its steps, one by one, in-process;
    every sample checked equal to TrainSet's), then collate. "entropy decode" is the same region decoded again at
    1/8 scale, which leaves libjpeg-turbo little but the Huffman decoding: a part of "decode", timed apart."""
    train_set, view = TrainSet(split, size, cfg.seed), Rows(split)
    steps: dict[str, float] = {}
    clock = time.process_time

    def tick(name: str, start: float) -> float:
        now = clock()
        steps[name] = steps.get(name, 0.0) + now - start
        return clock()

    for batch in batches(rows, cfg.batch_size):
        images = []
        for r in batch:
            t = clock()
            data, label = view[r]
            t = tick("row bytes (zero-copy view)", t)
            rng = pipeline_steps.sample_rng(cfg.seed, 0, r)
            segments = jpeg_markers.header_segments(data)
            height, width, fast_ok = decode.probe(data, segments)
            top, left, h, w = pipeline_steps.random_resized_crop_params(height, width, train_set.scale,
                                                                        train_set.ratio, rng)
            t = tick("header walk + crop box", t)
            tiles = decode.tile_grid(data, segments) if fast_ok and segments is not None else None
            t = tick("tile grid (index)", t)
            oy = ox = 0
            if tiles is not None:
                data, height, width, oy, ox = decode.region(data, tiles, top, left, h, w)
            t = tick("region cut", t)
            factor = decode.dct_factor(min(h, w), size)
            pixels, sy, sx = decode.decode_scaled(data, height, width, factor, fast_ok, fast_dct=True)
            t = tick("decode (entropy + IDCT at scale + colour)", t)
            if fast_ok:
                simplejpeg.decode_jpeg(data, min_height=1, min_width=1, strict=False)
            t = tick("  of which entropy decode (1/8-scale decode alone)", t)
            dy, dx = round(oy * sy), round(ox * sx)
            y0 = min(round(top * sy), dy + pixels.shape[0] - 1) - dy
            x0 = min(round(left * sx), dx + pixels.shape[1] - 1) - dx
            y1, x1 = max(y0 + 1, round((top + h) * sy) - dy), max(x0 + 1, round((left + w) * sx) - dx)
            out = decode.resize_uint8(torch.from_numpy(pixels)[y0:y1, x0:x1], (size, size), "bilinear")
            t = tick("crop copy + resize", t)
            if rng.random() < train_set.hflip:
                out = out.flip(-1)
            t = tick("flip", t)
            images.append((out, label))
        t = clock()
        collate(images)
        tick("collate (in-process)", t)
        for (out, _), r in zip(images, batch):
            if not torch.equal(out, train_set[(0, r)][0]):
                raise RuntimeError(f"train_profile: row {r} differs from TrainSet's sample; update the profile")
    profile = {name: round(1e6 * v / len(rows), 1) for name, v in steps.items()}
    profile["total"] = round(sum(v for k, v in profile.items() if not k.startswith(" ")), 1)
    return profile


def _timed_collate(batch):
    start = time.process_time()
    x, y = collate(batch)
    return x, y, time.process_time() - start


def collate_check(split: datasets.Dataset, rows: list[int], cfg: LoaderBenchConfig) -> dict:
    """CPU us per image of ``collate`` in-process and inside one DataLoader worker, on our train samples: in a worker
    every batch is fresh shared memory, which the kernel zero-fills and maps page by page before the images are
    copied in; in-process the allocator hands back the last batch's pages. Medians over the batches."""
    train_set = TrainSet(split, cfg.image_size, cfg.seed)
    keys = batches([(0, r) for r in rows], cfg.batch_size)
    out = {"in_process": statistics.median(_timed_collate([train_set[k] for k in b])[2] / len(b) for b in keys)}
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=keys, collate_fn=_timed_collate, num_workers=1)
    out["worker"] = statistics.median(t / x.shape[0] for x, _, t in loader)
    return {k: round(1e6 * v, 1) for k, v in out.items()}


def memory_check(split: datasets.Dataset, cfg: LoaderBenchConfig) -> dict:
    """A worker's RSS after 1024 samples spread over 10k and 100k rows built by repeating the dataset's rows
    (concatenated memory-mapped tables: no row is copied into RAM)."""
    out = {"worker": {}, "pickled_trainset_bytes": {}}
    for n in (10_000, 100_000):
        big = datasets.concatenate_datasets([split] * math.ceil(n / len(split))).select(range(n))
        train_set = TrainSet(big, 64, cfg.seed)
        keys = [(0, int(i)) for i in np.linspace(0, n - 1, 1024)]
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches(keys, 64), num_workers=1,
                                             collate_fn=_collate_with_status)
        status = None
        for _, _, status in loader:
            pass
        out["worker"][n] = status
        out["pickled_trainset_bytes"][n] = len(pickle.dumps(train_set))
    return out


if __name__ == "__main__":
    main()
