"""preprocess.py vs the usual route, ``load_dataset("imagefolder")`` + ``save_to_disk``, on one generated tree;
or (``--compare zip``) Kaggle's zip read in place vs ``unzip`` then preprocess.py on the unpacked tree; or
(``--compare parquet``) the Hub's ImageNet Parquet (train rows shuffled, so they go through the spool) vs
preprocess.py on the Kaggle tree of the same images.

    python benchmarks/preprocess.py --images 2000 --num_proc 2 --output benchmarks/results/preprocess.json
    python benchmarks/preprocess.py --compare zip --images 2000 --num_proc 2 \
        --output benchmarks/results/preprocess_zip.json
    python benchmarks/preprocess.py --compare parquet --images 2000 --num_proc 2 \
        --output benchmarks/results/preprocess_parquet.json

Both run as fresh subprocesses of the same Python (imports and start-up included, caches cold: the baseline gets
an empty cache_dir). The baseline only sees the train folder (imagefolder cannot read Kaggle's flat val + CSV), so
each method's images/s counts the images it stored. Peak RSS is the largest single process (os.wait4's ru_maxrss,
which covers waited-for workers) of the measured command alone: a small launcher interpreter starts it and reports
its rusage, since Linux starts a child's ru_maxrss at its parent's peak (kept across exec), and this process holds
~1 GB building the Parquet files of 10,000 images; the launcher's own ~10 MB is the floor. Disk is what each leaves:
the baseline's save_to_disk folder plus the Arrow cache load_dataset writes first. Prints a table and writes the
numbers as JSON.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagenet_trainer import ilsvrc  # noqa: E402
from imagenet_trainer.config import parse_config  # noqa: E402
from imagenet_trainer import demo_archives  # noqa: E402
from imagenet_trainer.demo import make_ilsvrc_tree  # noqa: E402
from imagenet_trainer.runinfo import atomic_write_text, library_versions  # noqa: E402

BASELINE = """
import sys, datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], split="train", cache_dir=sys.argv[2],
                           num_proc=int(sys.argv[4]) if int(sys.argv[4]) > 1 else None)
ds.save_to_disk(sys.argv[3], num_proc=int(sys.argv[4]) if int(sys.argv[4]) > 1 else None)
print(ds.num_rows)
"""


@dataclass
class BenchConfig:
    images: int = 2000  # train images in the generated tree (plus one val image per class and a few test images)
    num_classes: int = 20  # classes; images are split evenly
    source: str = "photos"  # demo tree source: "photos" (60-400 px JPEGs) or "digits" (32-64 px)
    num_proc: int = 2  # worker processes for both methods
    long_side: int = 500  # photos at ImageNet's typical 500x375 / 375x500 shapes; 0: varied 60-400 px
    shorter_side: int | None = None  # passed to preprocess.py (None: lossless default)
    restart_tile: int = 64  # passed to preprocess.py: px width of the tiles (0: files stored as read)
    work_dir: str | None = None  # where the tree and outputs go; None: a temp folder, deleted afterwards
    output: str = "benchmarks/results/preprocess.json"  # the JSON written
    compare: str = "imagefolder"  # imagefolder (vs load_dataset), zip (in place vs unzip) or parquet (the Hub's)
    rows_per_group: int = 100  # --compare parquet: rows per Parquet row group (the Hub's: ~2,000 images, 220 MB)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# Started by run(): its interpreter is a fresh exec (its own small memory), so the command it starts from there
# begins its ru_maxrss at ~10 MB, not at the benchmark's peak. Writes "seconds ru_maxrss_kB exit_code" to fd argv[1].
LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
os.write(int(sys.argv[1]), f"{seconds} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def run(cmd: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of ``cmd`` alone, through LAUNCHER: the rusage is this child's own."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(write_end), *cmd], cwd=ROOT, stdout=out,
                                    stderr=err, text=True, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        report = pipe.read().split()
        proc.wait()
        out.seek(0)
        err.seek(0)
        code = int(report[2]) if len(report) == 3 else proc.returncode
        if code != 0 or len(report) != 3:
            raise SystemExit(f"error: {' '.join(cmd[:3])} exited {code}:\n{err.read()[-2000:]}")
        return float(report[0]), int(report[1]) * 1024, out.read()


def run_watching_disk(cmd: list[str], folders: list[Path]) -> tuple[float, int, int]:
    """run(cmd) -> (seconds, peak RSS, peak bytes in ``folders`` together, sampled every 50 ms)."""
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], sum(du(f) for f in folders if f.exists()))

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        seconds, rss, _ = run(cmd)
    finally:
        done.set()
        watcher.join()
    return seconds, rss, max(peak[0], sum(du(f) for f in folders if f.exists()))


def zip_vs_unzip(tree: Path, work: Path, cfg: BenchConfig) -> dict:
    """Kaggle's zip read in place against unzip + preprocess.py: seconds, and the disk each needs besides the zip
    (peak, sampled while it runs: the output and its work folder, plus the unzipped tree for the second)."""
    zipped = demo_archives.kaggle_zip(tree, work / "kaggle.zip")
    settings = ["--num_proc", str(cfg.num_proc), "--restart_tile", str(cfg.restart_tile), "--overwrite",
                *(["--shorter_side", str(cfg.shorter_side)] if cfg.shorter_side else [])]
    outs = {name: work / name for name in ("from_zip", "from_tree", "unzipped")}
    for p in outs.values():
        shutil.rmtree(p, ignore_errors=True)
    watched = [outs["from_zip"], outs["from_zip"].with_name("from_zip.tmp")]
    sec, rss, disk = run_watching_disk([sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(zipped),
                                        "--output_dir", str(outs["from_zip"]), *settings], watched)
    in_place = {"seconds": sec, "peak_rss": rss, "peak_disk": disk, "bytes": du(outs["from_zip"])}
    watched = [outs["unzipped"], outs["from_tree"], outs["from_tree"].with_name("from_tree.tmp")]
    unzip_sec, _, unzip_disk = run_watching_disk(["unzip", "-q", str(zipped), "-d", str(outs["unzipped"])], watched)
    sec, rss, disk = run_watching_disk([sys.executable, str(ROOT / "preprocess.py"), "--data_dir",
                                        str(outs["unzipped"]), "--output_dir", str(outs["from_tree"]), *settings],
                                       watched)
    unzipped = {"seconds": unzip_sec + sec, "unzip_seconds": unzip_sec, "peak_rss": rss,
                "peak_disk": max(unzip_disk, disk), "bytes": du(outs["from_tree"])}
    report = json.loads((outs["from_zip"] / "preprocess_report.json").read_text())
    return {"zip_bytes": zipped.stat().st_size, "images": sum(report["counts"].values()), "in_place": in_place,
            "unzip_then_preprocess": unzipped,
            "ratio": {"seconds": in_place["seconds"] / unzipped["seconds"],
                      "peak_disk": in_place["peak_disk"] / unzipped["peak_disk"]}}


def parquet_vs_tree(tree: Path, work: Path, cfg: BenchConfig) -> dict:
    """The Hub's Parquet layout (train rows shuffled over 2 files, as the Hub's are over 294) read in place against
    the Kaggle tree of the same images: seconds, and peak disk besides the input (output + work folder: the spool)."""
    packed = demo_archives.hub_parquet(tree, work / "hub-parquet", rows_per_group=cfg.rows_per_group)
    settings = ["--num_proc", str(cfg.num_proc), "--restart_tile", str(cfg.restart_tile), "--overwrite",
                *(["--shorter_side", str(cfg.shorter_side)] if cfg.shorter_side else [])]
    measured = {}
    for name, source in (("in_place", packed), ("tree", tree)):
        out = work / f"from_{name}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(source), "--output_dir", str(out),
               *settings]
        sec, rss, disk = run_watching_disk(cmd, [out, out.with_name(out.name + ".tmp")])
        report = json.loads((out / "preprocess_report.json").read_text())
        measured[name] = {"seconds": sec, "peak_rss": rss, "peak_disk": disk, "bytes": du(out),
                          "images": sum(report["counts"].values())}
    return {"parquet_bytes": du(packed), "images": measured["in_place"]["images"], **measured,
            "ratio": {"seconds": measured["in_place"]["seconds"] / measured["tree"]["seconds"],
                      "peak_disk": measured["in_place"]["peak_disk"] / measured["tree"]["peak_disk"]}}


def print_parquet_table(r: dict) -> None:
    print(f"{'':<30}{'images':>8}{'seconds':>9}{'img/s':>8}{'peak disk MB':>14}{'peak RSS MB':>13}")
    for name, m in (("Hub Parquet read in place", r["in_place"]), ("Kaggle tree", r["tree"])):
        print(f"{name:<30}{m['images']:>8}{m['seconds']:>9.1f}{m['images'] / m['seconds']:>8.0f}"
              f"{m['peak_disk'] / 1e6:>14.1f}{m['peak_rss'] / 1e6:>13.0f}")
    print(f"{'ratio Parquet / tree':<30}{'':>8}{r['ratio']['seconds']:>8.2f}x{'':>8}{r['ratio']['peak_disk']:>13.2f}x")


def print_zip_table(r: dict) -> None:
    print(f"{'':<28}{'images':>8}{'seconds':>9}{'img/s':>8}{'peak disk MB':>14}"
          f"  (besides the {r['zip_bytes'] / 1e6:.1f} MB zip)")
    for name, m in (("zip read in place", r["in_place"]), ("unzip + preprocess.py", r["unzip_then_preprocess"])):
        print(f"{name:<28}{r['images']:>8}{m['seconds']:>9.1f}{r['images'] / m['seconds']:>8.0f}"
              f"{m['peak_disk'] / 1e6:>14.1f}")
    print(f"{'ratio in place / unzip':<28}{'':>8}{r['ratio']['seconds']:>8.2f}x{'':>8}"
          f"{r['ratio']['peak_disk']:>13.2f}x")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}"


def main(argv=None) -> None:
    cfg = parse_config(BenchConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.compare not in ("imagefolder", "zip", "parquet"):
        raise SystemExit(f"error: --compare must be imagefolder, zip or parquet, got {cfg.compare!r}")
    work = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        start = time.perf_counter()
        tree = make_ilsvrc_tree(work / "kaggle", source=cfg.source, num_classes=cfg.num_classes,
                                train_per_class=max(1, cfg.images // cfg.num_classes), val_per_class=1, num_test=4,
                                long_side=cfg.long_side)
        print(f"generated {tree} in {time.perf_counter() - start:.1f} s ({du(tree) / 1e6:.1f} MB)")
        if cfg.compare in ("zip", "parquet"):
            result = (zip_vs_unzip if cfg.compare == "zip" else parquet_vs_tree)(tree, work, cfg)
            (print_zip_table if cfg.compare == "zip" else print_parquet_table)(result)
            result.update(config=asdict(cfg), machine=machine(), versions=library_versions(),
                          load_average=os.getloadavg())  # 1/5/15-min, at the end: others' jobs slow the seconds
            atomic_write_text(cfg.output, json.dumps(result, indent=1))
            print(f"machine: {machine()}; num_proc={cfg.num_proc}\nwrote {cfg.output}")
            return
        train_dir = tree / ilsvrc.SPLIT_DIRS["train"]
        train_bytes = du(train_dir)

        sec, rss, stdout = run([sys.executable, "-c", BASELINE, str(train_dir), str(work / "hf_cache"),
                                str(work / "baseline"), str(cfg.num_proc)])
        baseline = {"images": int(stdout.split()[-1]), "seconds": sec, "peak_rss": rss,
                    "bytes": du(work / "baseline"), "cache_bytes": du(work / "hf_cache")}

        cmd = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir",
               str(work / "ours"), "--num_proc", str(cfg.num_proc), "--overwrite"]  # a reused --work_dir: redo
        if cfg.shorter_side:
            cmd += ["--shorter_side", str(cfg.shorter_side)]
        cmd += ["--restart_tile", str(cfg.restart_tile)]
        sec, rss, _ = run(cmd)
        report = json.loads((work / "ours" / "preprocess_report.json").read_text())
        ours = {"images": sum(report["counts"].values()), "seconds": sec, "peak_rss": rss,
                "bytes": du(work / "ours"), "cache_bytes": 0}
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    for r in (baseline, ours):
        r["images_per_s"] = r["images"] / r["seconds"]
    ratio = {"images_per_s": ours["images_per_s"] / baseline["images_per_s"],
             "bytes": ours["bytes"] / baseline["bytes"],
             "disk_incl_cache": ours["bytes"] / (baseline["bytes"] + baseline["cache_bytes"]),
             "peak_rss": ours["peak_rss"] / baseline["peak_rss"]}
    print(f"\nmachine: {machine()}; num_proc={cfg.num_proc}; {cfg.source} tree, {train_bytes / 1e6:.1f} MB of train "
          f"JPEGs")
    print(f"{'':<34}{'images':>8}{'seconds':>9}{'img/s':>9}{'MB out':>9}{'MB cache':>10}{'peak RSS MB':>13}")
    for name, r in (("imagefolder + save_to_disk (train)", baseline), ("preprocess.py (all splits)", ours)):
        print(f"{name:<34}{r['images']:>8}{r['seconds']:>9.1f}{r['images_per_s']:>9.0f}{r['bytes'] / 1e6:>9.1f}"
              f"{r['cache_bytes'] / 1e6:>10.1f}{r['peak_rss'] / 1e6:>13.0f}")
    print(f"{'ratio ours / baseline':<34}{'':>8}{'':>9}{ratio['images_per_s']:>8.2f}x{ratio['bytes']:>8.2f}x"
          f"{'':>10}{ratio['peak_rss']:>12.2f}x")
    result = {"config": asdict(cfg), "machine": machine(), "versions": library_versions(),
              "train_jpeg_bytes": train_bytes, "baseline": baseline, "ours": ours, "ratio": ratio}
    atomic_write_text(cfg.output, json.dumps(result, indent=1))
    print(f"wrote {cfg.output}")


if __name__ == "__main__":
    main()
