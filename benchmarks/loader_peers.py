"""NVIDIA DALI's and FFCV's ImageNet input pipelines on a list of JPEG files: the peers of benchmarks/loader.py.

benchmarks/loader.py --peers dali,ffcv runs this file with the interpreter that has the peers installed
(--peer_python; its own by default), one JSON request on stdin, one JSON line on stdout:

    {"action": "version", "peer": P}                             -> {"version": V} or {"missing": reason}
    {"action": "prepare", "peer": P, "files": [...], "labels": [...], "work_dir": D}   -> {"stored_bytes": B}
    {"action": "measure", "peer": P, "files": [...], "labels": [...], "work_dir": D, "train_sizes": [224, 192],
     "eval_size": 224, "batch_size": 64, "threads": 1, "cpus": [0] or null, "seed": 0}
        -> {pipeline: {"img_s": R, "cpu_us": U}}; pipelines "train" (train_sizes[0]), "train_<size>", "eval"

Each pipeline gets one untimed epoch (DALI builds, FFCV compiles its numba code), then one timed epoch. Only
numpy and the peer are imported, so a peer may live in an environment of its own.

Peers, with the settings each documents for ImageNet training:
  dali           fn.readers.file -> fn.decoders.image_random_crop (CPU; libjpeg-turbo decodes only the crop's
                 region; default area [0.08, 1] and aspect [3/4, 4/3]) -> fn.resize (triangular, as DALI's ResNet-50
                 example) -> fn.crop_mirror_normalize (random mirror, uint8 HWC). Eval: fn.decoders.image ->
                 resize shorter side to size / 0.875 -> centre crop. CPU only (device_id=None).
  ffcv_jpg       FFCV's JPEG-only mode: RGBImageField(write_mode="jpg") at full resolution (FFCV re-encodes at its
                 default jpeg_quality 90), RandomResizedCropRGBImageDecoder -> RandomHorizontalFlip -> ToTensor;
                 eval CenterCropRGBImageDecoder(ratio 224/256).
  ffcv_imagenet  the same pipeline on FFCV's ImageNet writer settings (libffcv/ffcv-imagenet, write_imagenet.sh
                 500 0.50 90): max_resolution 500, write_mode "proportion", compress_probability 0.5 (half the
                 images stored as raw pixels), jpeg_quality 90.
FFCV's loader threads can keep the interpreter from exiting when an epoch is left early: whole epochs only, and
os._exit after the answer is printed.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from importlib import metadata

FFCV_SETTINGS = {  # RGBImageField arguments
    "ffcv_jpg": dict(write_mode="jpg", max_resolution=None, jpeg_quality=90),
    "ffcv_imagenet": dict(write_mode="proportion", max_resolution=500, compress_probability=0.5, jpeg_quality=90),
}
PEERS = ("dali", *FFCV_SETTINGS)


def version(peer: str) -> dict:
    try:
        if peer == "dali":
            import nvidia.dali  # noqa: F401
            name = next((d for d in ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110")
                         if _installed(d)), None)
            return {"version": f"{name} {metadata.version(name)}" if name else nvidia.dali.__version__}
        import ffcv  # noqa: F401
        return {"version": f"ffcv {metadata.version('ffcv')}"}
    except Exception as e:  # ImportError, or a library that fails to load (a missing libturbojpeg, opencv...)
        return {"missing": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def beton(req: dict) -> str:
    return os.path.join(req["work_dir"], f"{req['peer']}.beton")


def prepare_ffcv(req: dict) -> dict:
    """Writes the files as FFCV's .beton with the peer's settings (untimed: FFCV's own preprocessing step)."""
    import numpy as np
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from PIL import Image

    class Files:  # FFCV's writer takes an indexed dataset of (image, label)
        def __len__(self):
            return len(req["files"])

        def __getitem__(self, i):
            return Image.open(req["files"][i]).convert("RGB"), req["labels"][i]

    np.random.seed(req.get("seed", 0))  # "proportion" mode draws which images stay raw from numpy's global RNG
    fields = {"image": RGBImageField(**FFCV_SETTINGS[req["peer"]]), "label": IntField()}
    DatasetWriter(beton(req), fields, num_workers=1).from_indexed_dataset(Files())
    return {"stored_bytes": os.path.getsize(beton(req))}


def measure_ffcv(req: dict) -> dict:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor

    def loader(decoder, flip: bool):
        image = [decoder, *([RandomHorizontalFlip()] if flip else []), ToTensor()]
        return Loader(beton(req), batch_size=req["batch_size"], num_workers=req["threads"],
                      order=OrderOption.RANDOM if flip else OrderOption.SEQUENTIAL, seed=req["seed"],
                      os_cache=True, drop_last=False, pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})

    def epoch(run):
        count = 0
        for x, _ in run:
            count += x.shape[0]
        return count

    out = {}
    for name, size, make in pipelines(req):
        run = loader(RandomResizedCropRGBImageDecoder((size, size)), True) if make == "train" else \
            loader(CenterCropRGBImageDecoder((size, size), ratio=224 / 256), False)
        out[name] = timed(epoch, run)
    return out


def measure_dali(req: dict) -> dict:
    from nvidia.dali import fn, pipeline_def, types

    files, labels, size_of = req["files"], req["labels"], {}

    @pipeline_def(batch_size=req["batch_size"], num_threads=req["threads"], device_id=None, seed=req["seed"] + 1)
    def pipe(train: bool, size: int):
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=train, pad_last_batch=True,
                                       name="reader")
        if train:
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_TRIANGULAR)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=math.floor(size / 0.875), interp_type=types.INTERP_TRIANGULAR)
            mirror = False
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="HWC", crop=(size, size),
                                          mirror=mirror)
        return images, label

    def epoch(p):
        for _ in range(math.ceil(len(files) / req["batch_size"])):
            images, _ = p.run()
            size_of.setdefault("shape", images.as_tensor().shape())  # HWC uint8, checked once
        return len(files)

    out = {}
    for name, size, make in pipelines(req):
        p = pipe(make == "train", size)
        p.build()
        out[name] = timed(epoch, p)
    return out


def pipelines(req: dict):
    sizes = req["train_sizes"]
    return [("train", sizes[0], "train"), *((f"train_{s}", s, "train") for s in sizes[1:]),
            ("eval", req["eval_size"], "eval")]


def timed(epoch, run) -> dict:
    epoch(run)  # untimed: builds, compiles, fills the page cache
    start, cpu = time.perf_counter(), time.process_time()
    count = epoch(run)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"img_s": count / wall, "cpu_us": 1e6 * cpu / count}


def answer(req: dict) -> dict:
    if req["peer"] not in PEERS:
        raise ValueError(f"unknown peer {req['peer']!r}; known: {', '.join(PEERS)}")
    if req["action"] == "version":
        return version(req["peer"])
    if req.get("cpus"):
        os.sched_setaffinity(0, req["cpus"])  # before any thread pool starts: every thread inherits it
    if req["action"] == "prepare":
        return {"stored_bytes": sum(os.path.getsize(f) for f in req["files"])} if req["peer"] == "dali" \
            else prepare_ffcv(req)
    if req["action"] == "measure":
        return measure_dali(req) if req["peer"] == "dali" else measure_ffcv(req)
    raise ValueError(f"unknown action {req['action']!r}")


if __name__ == "__main__":
    try:
        reply = answer(json.loads(sys.stdin.read()))
    except Exception as e:
        reply = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(reply), flush=True)
    sys.stderr.flush()
    os._exit(0)  # FFCV's loader threads may still be alive
