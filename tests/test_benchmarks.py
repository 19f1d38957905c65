"""The benchmark scripts run and keep their output contracts (timings are never asserted: they live in
BENCHMARKS.md). Tiny runs on the session's real ILSVRC tree and its preprocess.py output."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses resolve annotations through it
    spec.loader.exec_module(loaded)
    return loaded


def loader(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--num_images", "12",
                           "--batch_size", "4", "--image_size", "64", "--repeats", "1", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_loader_benchmark_against_the_baseline(ilsvrc_tree, preprocessed, tmp_path):
    out = tmp_path / "loader.json"
    proc = loader("--data_dir", ilsvrc_tree, "--dataset", preprocessed, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"baseline_img_s", "ours_img_s", "ratio", "machine"} <= report.keys()  # the JSON contract
    assert report["ratio"] == round(report["ours_img_s"] / report["baseline_img_s"], 2)
    assert set(report["pipelines"]) == {"train", "eval"} and report["num_images"] == 12
    assert report["entropy_decode"]["img_s"] > 0
    assert "pipeline" in proc.stdout and "ratio" in proc.stdout  # the printed table
    assert 0 <= report["progressive_share"] <= 1


def test_loader_benchmark_coding_filter(ilsvrc_tree, preprocessed, tmp_path):
    out = tmp_path / "loader.json"
    proc = loader("--data_dir", ilsvrc_tree, "--dataset", preprocessed, "--coding", "baseline", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["progressive_share"] == 0
    proc = loader("--data_dir", ilsvrc_tree, "--dataset", preprocessed, "--coding", "arithmetic")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: --coding arithmetic: use all, baseline or progressive"


def test_loader_self_test_on_a_dataset_alone(preprocessed, tmp_path):
    out = tmp_path / "self.json"
    proc = loader("--dataset", preprocessed, "--num_workers", "2", "--feed_img_s", "1000", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    train = report["pipelines"]["train"]
    assert "baseline_img_s" not in train
    assert abs(train["img_s_per_core"] - train["ours_img_s"] / 2) <= 0.1  # 2 workers: 2 cores
    assert abs(train["cores_to_feed"] - 1000 / train["img_s_per_core"]) <= 0.1
    assert "cores to feed 1000 img/s" in proc.stdout
    assert set(report["pipelines"]) == {"train", "eval"}
    assert "train_profile_us" not in report
    # --train_only: what feeding an accelerator takes, without the eval pipeline's passes; --profile: each step's
    # CPU time of a train sample (train_profile checks every sample against TrainSet's)
    proc = loader("--dataset", preprocessed, "--train_only", "--num_images", "16", "--repeats", "1", "--profile",
                  "--image_size", "48", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["pipelines"]) == {"train"} and "pass 1/1 eval" not in proc.stdout
    profile = report["train_profile_us"]["48"]
    assert profile["total"] > profile["decode (entropy + IDCT at scale + colour)"] > 0
    assert report["cpu_capability"] in ("DEFAULT", "VSX", "Z VECTOR", "NO AVX", "AVX2", "AVX512", "SVE256")
    assert "ours, train at 48 px, CPU us per sample:" in proc.stdout


def test_loader_benchmark_errors_are_one_line(tmp_path):
    proc = loader("--data_dir", tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: --dataset is required (preprocess.py output of --data_dir "
                                                    "(images stored as they were))")
    proc = loader("--data_dir", tmp_path, "--dataset", tmp_path, "--train_only")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --train_only is for the self-test")
    proc = loader("--data_dir", tmp_path, "--dataset", tmp_path, "--profile")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --profile is for the self-test")


def test_loader_benchmark_checks_shared_memory_before_its_workers_start(preprocessed, tmp_path):
    """Every loader's workers persist through the run: /dev/shm must hold their batches at once, or the run ends in
    a bus error mid-pass (a container's 64 MB default). A batch no /dev/shm holds is refused in one line, before any
    pass, and the need counts every loader: ours' ring slots per train size, torchvision's float32 batches."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm on this system")
    batch = shutil.disk_usage("/dev/shm").free // (64 * 64 * 3) + 1  # one batch of 64 px images is more than it has
    proc = loader("--dataset", preprocessed, "--num_workers", "1", "--batch_size", batch, "--train_only")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "pass 1/1" not in proc.stdout
    error = proc.stderr.strip().splitlines()[-1]
    spec = module(ROOT / "benchmarks" / "loader.py")
    pf = spec.PREFETCH_FACTOR
    ring = spec.RING_SLOTS + pf  # a train worker's ring slots and prefetched batches
    assert error.startswith("error: /dev/shm has ") and "--shm-size=" in error and "lower --num_workers" in error
    assert f"need {(ring + 2) * batch * 64 * 64 * 3 / 2**20:.1f} MiB" in error, error  # + 2 in the process's hands
    batch = shutil.disk_usage(tmp_path).free // (48 * 48 * 3) + 1
    cfg = spec.LoaderBenchConfig(dataset="x", data_dir="tree", num_workers=2, batch_size=batch, image_size=64,
                                 peers="dali", peer_size=48)  # the comparison: train at 64 and 48 px, eval at 64
    values = lambda side: batch * side * side * 3  # noqa: E731 (a batch's values)
    held = [(ring, values(64)), (ring, values(48)), (pf, values(64)),  # ours
            (pf, 4 * values(64)), (pf, 4 * values(48)), (pf, 4 * values(64))]  # torchvision's, 4 bytes a value
    with pytest.raises(SystemExit, match=f"need {sum((2 * k + 2) * v for k, v in held) / 2**20:.1f} MiB"):
        spec.check_shm_room(cfg, {"": None}, shm=str(tmp_path))


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu: every stage runs (tiny, no GPU figure) and reports in the shape BENCHMARKS.md
    describes; a stage that fails is reported with its log and the others still report."""
    out = tmp_path / "gpu_check.json"
    inherited = tmp_path / "inductor"  # a cache the environment names (any process that imported Inductor does)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GPU_CHECK_FAIL_STAGE": "fsdp", "TORCHINDUCTOR_CACHE_DIR": str(inherited),
                                   "PYTHON": sys.executable})  # this suite's interpreter, .venv or not
    assert proc.returncode == 1, proc.stderr[-5000:]  # the failed stage makes the run's status non-zero
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert report["mode"].startswith("cpu dry run") and report["machine"]["cpu_cores"] >= 1
    # the goal's figures first (throughput beside tree, the originals beside train_8cores, validate and fsdp beside
    # workers)
    assert list(stages) == ["tree", "throughput", "train_8cores", "originals", "train_recipe", "workers", "validate",
                            "fsdp", "train_eager"]
    assert report["pending"] == []
    assert {k for k, v in stages.items() if v["status"] != 0} == {"fsdp"}, proc.stderr[-5000:]
    assert stages["fsdp"]["log_tail"] == ["failing on purpose: GPU_CHECK_FAIL_STAGE=fsdp"]
    assert stages["tree"]["images"]["train"] > 0 and stages["tree"]["mean_kb"] > 0
    small = stages["tree"]["shorter_side_256"]  # the copy README.md recommends when the cores per GPU are few
    assert small["images"] == stages["tree"]["images"] and small["skipped"] == 0
    assert small["preprocess_seconds"] > 0 and small["preprocess_img_s"] > 0
    steps = stages["tree"]["step_seconds"]  # each command's seconds, start-up included: what to cut the stage by
    assert set(steps) == {"generate", "preprocess_256"}
    assert sum(steps.values()) <= stages["tree"]["seconds"]
    assert steps["preprocess_256"] >= int(small["preprocess_seconds"])
    originals = stages["originals"]  # every file of the tree, as the later stages read them
    assert originals["images"] == stages["tree"]["images"] and originals["skipped"] == 0
    assert originals["preprocess_seconds"] > 0 and originals["preprocess_img_s"] > 0
    # the bare loop (the GPU's ceiling; here a tiny model on the CPU) beside the tree, on a core the tree does not use
    throughput, cores = stages["throughput"], report["machine"]["cpu_cores"]
    # at the batch that fills the device, and at the recipe's size with train.py's batch (its like-for-like ceiling)
    assert sorted((r["model"], r["image_size"], r["batch_size"]) for r in throughput["runs"]) == [
        ("blocknet_tiny", 32, 8), ("blocknet_tiny", 32, 16), ("blocknet_tiny", 48, 16)]
    assert all(r["img_s"] > 0 for r in throughput["runs"])
    if cores > 1:
        tree_cpus, own = stages["tree"]["cpus"].split(","), throughput["cpus"].split(",")
        assert throughput["beside_tree"] and len(own) == 1 and own[0] not in tree_cpus
        assert len(tree_cpus) == stages["tree"]["num_proc"] == cores - 1
    # where each train.py launch's seconds went, all of the stage's accounted for
    for name in ("train_8cores", "train_recipe", "train_eager"):
        split = stages[name]["seconds_split"]
        assert set(split) == {"startup", "train", "eval", "export", "checkpoint", "other"}, name
        assert all(split[k] > 0 for k in ("startup", "train", "eval", "checkpoint")), (name, split)
        assert sum(split.values()) == pytest.approx(stages[name]["seconds"], abs=0.05), name
        phases = stages[name]["startup_split_s"]  # the start-up by phase (run_info.json's)
        assert sum(phases.values()) == pytest.approx(split["startup"], abs=0.04) and phases["imports"] > 0, name
        # the workers' fork server started with the launch's first lines, through sync_probe.py too
        assert 0 <= stages[name]["worker_server_started_s"] < phases["imports"], name
    for name in ("train_eager", "train_recipe"):
        train = stages[name]
        assert train["steps"] > 0 and train["images_per_sec"] > 0 and 0 <= train["data_wait_frac"] <= 1
        assert train["first_batch_s"] > 0 and 0 <= train["data_wait_steady_frac"] <= train["data_wait_frac"]
        assert train["cores"] == report["machine"]["cpu_cores"] and train["num_workers"] == max(1, train["cores"] - 1)
    goal = stages["train_8cores"]  # the goal's setting: on a GPU machine pinned to its first 8 cores; in the dry
    cores = 1  # run to one, its worker sharing it, so that a 2-core box has a core for the originals beside it
    assert goal["cores"] == cores and len(goal["cpus"].split(",")) == cores
    assert goal["workers"] == goal["num_workers"] == max(1, cores - 1)
    assert goal["dataset"] == "preprocess.py --shorter_side 256" and goal["image_size"] == 32
    assert goal["steady_epochs"] == len(goal["per_epoch"]) - 1 >= 2
    assert goal["steps_per_epoch"] == small["images"]["train"] // 8  # batch 8
    assert goal["images_per_sec"] > 0 and 0 <= goal["data_wait_frac"] <= 1
    assert goal["goal"] == {"images_per_sec_steady_at_least": 4000, "data_wait_steady_frac_below": 0.05,
                            "cores_at_most": 8}
    # without each epoch's first-batch wait: no more waiting and a rate no lower. Not strictly: the report rounds
    # (shares to 0.001, rates to 0.1 img/s), and a first batch of a few ms in a CPU epoch of seconds leaves the
    # figures equal; tests/test_train.py checks the unrounded metrics.jsonl rows strictly
    assert goal["data_wait_steady_frac"] <= goal["data_wait_frac"]
    assert goal["images_per_sec_steady"] >= goal["images_per_sec"]
    assert all(e["first_batch_s"] > 0 and e["data_wait_steady_frac"] <= e["data_wait_frac"] for e in goal["per_epoch"])
    assert "goal_met" in goal and goal["goal_met"] is None  # a GPU's figure only
    # --compile (Inductor, here on the CPU): the goal's stage compiles cold into the run's own cache (never the one
    # the environment names), train_recipe (the same graphs) loads every one of them from it, the eager run compiles
    # none
    assert not inherited.exists()
    assert goal["compile"] and goal["graphs_compiled"] >= 2  # train and eval at least
    assert stages["train_recipe"]["compile"] and stages["train_recipe"]["graphs_compiled"] == 0
    # train_recipe ran through benchmarks/sync_probe.py: its waits for the device, within train.py's budget (off CUDA
    # the host reads are counted)
    syncs = stages["train_recipe"]["syncs"]
    assert syncs["counted"] == "host_reads" and syncs["steady_steps"] > 0 and syncs["within_budget"] is True, syncs
    assert 0 < syncs["steady_waits"] <= syncs["budget"] and len(syncs["per_epoch"]) == 2  # the dry run: --epochs 2
    assert "syncs" not in stages["train_eager"]  # launched as train.py alone
    assert not stages["train_eager"]["compile"] and stages["train_eager"]["graphs_compiled"] == 0
    workers = stages["workers"]
    # the rate the loader has to keep up with: the fastest steady epoch of a train.py stage at the recipe's settings
    assert workers["feed_source"] in ("train_8cores", "train_recipe") and workers["feed_img_s"] > 0
    for copy in ("", "_256"):
        sweep = workers[f"sweep{copy}"]
        assert sweep and sweep[0]["workers"] == 1 and sweep[0]["img_s"] > 0, copy
        # the rate over the largest run's rate per worker, plus the main process's core
        for key, img_s in (("cores_per_gpu", workers["feed_img_s"]), ("cores_at_goal", 4000)):
            assert workers[f"{key}{copy}"] == round(img_s / sweep[-1]["img_s_per_worker"] + 1, 1) >= 1, key + copy
    # where a sample's time goes on this CPU, for each copy; and what the CPU is
    assert set(workers["train_profile_us"]) == {"originals", "256"}
    assert all(p["total"] > 0 for p in workers["train_profile_us"].values())
    assert report["machine"]["cpu_capability"] and "cpu_model" in report["machine"]
    if report["machine"]["cpu_cores"] > 1:  # validate and fsdp (made to fail: reported all the same) beside workers
        own, side = workers["cpus"].split(","), stages["validate"]["cpus"].split(",")
        assert workers["beside"] == ["validate", "fsdp"] and stages["validate"]["beside_workers"] is True
        assert not set(own) & set(side) and len(own) + len(side) == report["machine"]["cpu_cores"]
        # all three at once (started_s: seconds into the run), as throughput and tree
        started = [stages[n]["started_s"] for n in ("workers", "validate", "fsdp")]
        assert max(started) - min(started) <= 1
        assert abs(stages["throughput"]["started_s"] - stages["tree"]["started_s"]) <= 1
        assert stages["train_8cores"]["started_s"] >= stages["tree"]["started_s"] + stages["tree"]["seconds"]
        # the originals' preprocess beside train_8cores, on the cores it does not use; done before what reads them
        assert originals["beside_train_8cores"] is True
        assert abs(originals["started_s"] - goal["started_s"]) <= 1
        assert not set(originals["cpus"].split(",")) & set(goal["cpus"].split(","))
        assert originals["num_proc"] == len(originals["cpus"].split(",")) == report["machine"]["cpu_cores"] - 1
        done = max(originals["started_s"] + originals["seconds"], goal["started_s"] + goal["seconds"])
        assert stages["train_recipe"]["started_s"] >= done
        # and it ended before the epochs the goal is judged on (here: long before, during a one-core compile)
        assert originals["ended_by_s"] == originals["started_s"] + originals["seconds"] + 1
        assert originals["goal_epochs_from_s"] > goal["started_s"] + goal["first_epoch_train_s"]
        assert originals["done_before_goal_epochs"] is True, originals
    assert stages["validate"]["matches_card"] is True
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as logs:
        assert {Path(n).name for n in logs.getnames()} >= {"tree.log", "train_eager.log", "validate.log"}
    assert stages["validate"]["n"] > 0  # of train_recipe's export, the run the recipe's settings made


def test_gpu_check_fsdp_stage_separates_a_step_from_a_launch(tmp_path):
    """The fsdp stage (failed on purpose in the dry run above) run for real: stop at a checkpoint, resume, and from
    its two launches of different lengths a step's seconds apart from each launch's one-time seconds. Off a GPU
    accelerate runs fsdp.yaml as CPU DDP: the figures say so (measured false). Run from another folder than the
    repository's."""
    out = tmp_path / "out" / "gpu_check.json"
    # started elsewhere than the repository (a job script's own folder), its --out relative to there: the tree's
    # `python -m imagenet_trainer.demo` must find this project's package all the same
    proc = subprocess.run(["bash", str(GPU_CHECK), "--cpu", "--stages", "tree,fsdp", "--out", "out/gpu_check.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-5000:]
    fsdp = json.loads(out.read_text())["stages"]["fsdp"]
    assert fsdp["status"] == 0 and fsdp["measured"] is False and fsdp["distributed_type"] == "DistributedType.MULTI_CPU"
    assert fsdp["resumed_at_step"] == 2 and fsdp["final_step"] == 5 and len(fsdp["startup_s"]) == 2
    assert [launch["steps"] for launch in fsdp["launches"]] == [2, 3]
    # each launch's time after its first batch = its one-time seconds + its steps x a step's (to the rounding)
    for launch in fsdp["launches"]:
        computing = launch["train_s"] - launch["first_batch_s"]
        assert computing == pytest.approx(fsdp["one_time_s"] + launch["steps"] * fsdp["step_s"], abs=0.03), fsdp


def killed_when(proc: subprocess.Popen, ready, timeout_s: float, never: str) -> None:
    """SIGKILL to ``proc``'s process group (a scheduler's at a time limit) once ``ready()``; ``never`` if it ends or
    ``timeout_s`` pass first."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, never
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_gpu_check_killed_mid_run_keeps_what_it_finished(tmp_path):
    """A run stopped at a time limit (SIGKILL to its process group, as a job scheduler's) leaves the JSON and the logs
    of every stage it finished, and names the stages it did not reach (killed as the originals' preprocess starts,
    right after the dry run's short tree stage)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.Popen(["bash", str(GPU_CHECK), "--cpu", "--out", str(out), "--stages", "tree"], cwd=ROOT,
                            start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path),  # its work folder, left by the kill
                                 "PYTHON": sys.executable},  # this suite's interpreter, .venv or not
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_when(proc, lambda: out.is_file() and "tree" in json.loads(out.read_text())["stages"], 300,
                "the tree stage never reported")
    report = json.loads(out.read_text())
    assert report["stages"]["tree"]["status"] == 0 and report["pending"] == ["originals"]
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as logs:
        assert [Path(n).name for n in logs.getnames()] == ["tree.log"]


def cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


def test_gpu_check_stage_past_its_time_limit_is_stopped_and_recorded(tmp_path):
    """--stage_limit_s: a stage that outlasts it (throughput's three bare-loop launches, a second each with its
    imports) has its processes ended and is recorded as cut at the limit, and the run goes on to its end, so one
    stage that hangs on a GPU machine does not cost the stages after it."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(GPU_CHECK), "--cpu", "--stages", "throughput", "--stage_limit_s", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 1, proc.stderr[-3000:]  # a stage failed
    report = json.loads(out.read_text())
    stage = report["stages"]["throughput"]
    assert stage["status"] == 124 and stage["time_limit_s"] == 2 and stage["seconds"] <= 2 + 25, stage
    assert "--stage_limit_s 2" in stage["log_tail"][-1] and report["pending"] == []
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and str(tmp_path).encode() in cmdline(pid)], \
        "a stage's process outlived its time limit"
    bad = subprocess.run(["bash", str(GPU_CHECK), "--cpu", "--stage_limit_s", "2m"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--stage_limit_s" in bad.stderr, bad.stderr


def test_gpu_check_stage_cut_at_its_limit_ends_a_rank_in_a_session_of_its_own(tmp_path):
    """torchrun starts each rank in a session of its own: a stage cut at its limit must still end a rank that
    ignores SIGTERM (SIGKILL after the grace time), or it would hold the GPU through the next stages; and a SIGKILL
    to the script's process group (an outer `timeout -s KILL`) ends the stage's processes with it."""
    python = stand_in_python(tmp_path, "stuck")
    proc = subprocess.run(["bash", str(GPU_CHECK), "--cpu", "--stages", "throughput", "--stage_limit_s", "3",
                           "--out", str(tmp_path / "gpu_check.json")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": str(python), "TMPDIR": str(tmp_path)})
    pids = [int(pid) for pid in (tmp_path / "stand_in_pids").read_text().split()]  # the stage, its stuck child
    try:
        assert not [pid for pid in pids if running(pid)], proc.stderr
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stage = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["throughput"]
    assert proc.returncode == 1 and stage["status"] == 124 and stage["time_limit_s"] == 3, (stage, proc.stderr)

    (tmp_path / "stand_in_pids").unlink()
    proc = subprocess.Popen(["bash", str(GPU_CHECK), "--cpu", "--stages", "throughput", "--out",
                             str(tmp_path / "gpu_check.json")], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHON": str(stand_in_python(tmp_path,
                                                                                                       "hang"))})
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stand_in_pids").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the stage never started"
            time.sleep(0.1)
        pids = [int(pid) for pid in (tmp_path / "stand_in_pids").read_text().split()]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
        assert not [pid for pid in pids if running(pid)], "a stage's process outlived a SIGKILL to the group"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_gpu_check_worker_sweep_fits_a_machine_with_fewer_cores():
    """On a GPU machine with fewer cores than the sweep's largest point needs (8 workers + the main process), that
    point takes the cores less one rather than being left out (a workers stage without figures), and the cores left
    beside the sweep (for validate and fsdp, split between them where there are 3 or more) follow; the originals'
    preprocess runs beside train_8cores only where enough cores are left. The script's own functions, at its GPU
    settings."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    functions = "\n".join(re.search(rf"^{name}\(\) {{.*?^}}", script, re.M | re.S).group(0)
                          for name in ("points", "sweep_cores", "split_side"))
    settings = re.search(r"^  (SWEEP=\(.*?\); SWEEP_256=\(.*?\); SWEEP_MAIN=1);", script, re.M).group(1)
    assert settings == "SWEEP=(8); SWEEP_256=(1 8); SWEEP_MAIN=1"
    for cores, originals, copy, used in ((16, "8", "1 8", "9"), (9, "8", "1 8", "9"), (8, "7", "1 7", "8"),
                                         (2, "1", "1", "2")):
        shown = subprocess.run(["bash", "-c", f"CORES={cores}; {settings}\n{functions}\n"
                                'echo $(points "${SWEEP[@]}"); echo $(points "${SWEEP_256[@]}"); sweep_cores'],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert shown == [originals, copy, used], cores
    # the originals' preprocess beside train_8cores (8 cores) where at least 4 are left for it, else after it
    fits = re.search(r"^originals_fit_beside\(\) {.*?^}", script, re.M | re.S).group(0)
    for cores, pin, beside in ((16, 8, True), (12, 8, True), (11, 8, False), (8, 8, False), (2, 1, True),
                               (1, 1, False)):
        shown = subprocess.run(["bash", "-c", f"CORES={cores}; GOAL_PIN={pin}\n{fits}\noriginals_fit_beside"])
        assert (shown.returncode == 0) is beside, (cores, pin)
    # validate (200 images) on the last 2 of the cores beside the sweep and fsdp on the rest; fewer: both on all
    for side, validate, fsdp in (("9,10,11,12,13,14,15", "14,15", "9,10,11,12,13"), ("6,7,8", "7,8", "6"),
                                 ("8,9", "8,9", "8,9"), ("1", "1", "1")):
        shown = subprocess.run(["bash", "-c", f"{functions}\nsplit_side {side}"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert shown == [validate, fsdp], side


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the check itself")
def test_gpu_check_without_a_gpu_says_how_to_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 2 and not out.exists()
    line = proc.stderr.strip().splitlines()[-1]
    python = ROOT / ".venv" / "bin" / "python"
    assert line.startswith(f"error: no CUDA GPU visible to {python} (torch {torch.__version__}")
    assert (" is built without CUDA" if torch.version.cuda is None else " sees no GPU") in line  # why, not only that
    assert proc.stderr.strip().endswith("add --cpu for the dry run")
    assert [p.name for p in tmp_path.iterdir()] == []  # its work folder is gone


def test_gpu_check_with_a_venv_copied_from_another_machine_says_so(tmp_path):
    """A venv carried to the GPU machine links to an interpreter that is not there: one line saying so, not a run
    on whatever python3 the machine has (another torch, or none, reported as a missing import)."""
    root = tmp_path / "checkout"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(GPU_CHECK, root / "benchmarks")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to("/nonexistent/pyenv/bin/python3")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--cpu", "--out",
                           str(tmp_path / "g.json")], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: {root}/.venv/bin/python does not run here (it links to /nonexistent/pyenv/bin/python3, missing on "
        "this machine): make the venv here (make install) or give PYTHON= an interpreter with requirements.txt"]


def test_gpu_check_refuses_what_it_cannot_run_in_one_line(tmp_path):
    """Arguments and an interpreter it cannot run with: status 2 and one line saying what to change, before any
    stage runs or any file is written; not a shell error, a stage failing late on a tree the run never made, or
    another python3 taken in silence and then reported as a machine without a GPU."""
    no_torch = tmp_path / "python_without_torch"  # this interpreter without its site-packages
    no_torch.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -S "$@"\n')
    no_torch.chmod(0o755)
    typo = tmp_path / "venv" / "bin" / "pyhton"
    for args, python, message in (
            (["--nope"], sys.executable, "error: unknown argument --nope"),
            (["--stages", "tree,warp"], sys.executable, "error: --stages: unknown stage warp"),
            (["--cpu", "--out"], sys.executable, "error: --out needs a value"),
            (["--out", "--cpu"], sys.executable, "error: --out needs a value"),
            (["--cpu", "--stages"], sys.executable, "error: --stages needs a value"),
            (["--cpu", "--stages", ""], sys.executable, "error: --stages needs a value"),
            (["--cpu", "--stages", "tree,,fsdp"], sys.executable, "error: --stages: an empty stage name"),
            (["--cpu", "--stages", "train_recipe"], sys.executable,
             "error: --stages: train_recipe needs tree in the same run"),
            (["--cpu", "--stages", "throughput,originals"], sys.executable,
             "error: --stages: originals needs tree in the same run"),
            (["--cpu", "--stages", "tree,validate"], sys.executable,
             "error: --stages: validate needs train_recipe in the same run"),
            (["--cpu", "--stages", "throughput"], str(typo), f"error: PYTHON={typo} is not an executable file"),
            (["--cpu", "--stages", "throughput"], str(no_torch),
             f"error: {no_torch} cannot import what the stages need (ModuleNotFoundError: No module named 'torch')")):
        out = [] if "--out" in args else ["--out", str(tmp_path / "gpu_check.json")]  # never the repository's
        bad = subprocess.run(["bash", str(GPU_CHECK), *out, *args], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHON": python, "TMPDIR": str(tmp_path)})
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, (args, bad.stderr)
        assert bad.stderr.startswith(message), (args, bad.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python_without_torch"]  # no JSON, no work folder left


def test_gpu_check_machine_check_imports_the_data_path_and_reports_before_the_first_stage(tmp_path):
    """An interpreter without the JPEG codec preprocess.py and the loader run on is refused in one line before any
    stage (not every stage failing on it); and the JSON (the machine, every stage pending) is written before the
    first stage, so a run killed during it still says which machine it ran on."""
    broken = tmp_path / "shadow"
    broken.mkdir()
    (broken / "simplejpeg.py").write_text("raise ImportError('simplejpeg built for another CPU')\n")
    out = tmp_path / "gpu_check.json"
    bad = subprocess.run(["bash", str(GPU_CHECK), "--cpu", "--stages", "tree", "--out", str(out)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(broken)})
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "cannot import what the stages need (ImportError: simplejpeg built for another CPU)" in bad.stderr
    proc = subprocess.Popen(["bash", str(GPU_CHECK), "--cpu", "--out", str(out), "--stages", "tree"], cwd=ROOT,
                            start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path), "PYTHON": sys.executable},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_when(proc, out.is_file, 120, "no JSON before the first stage")
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_cores"] >= 1 and report["stages"] == {}
    assert report["pending"] == ["tree", "originals"]


# the throughput stage's bare loop (benchmarks/train_loop.py), stood in for: "quick" writes a result at once; "hang"
# starts a child and waits, and a SIGTERM takes it a second to act on (train.py checkpoints first), after which it
# notes whether the stage's work folder was still there
TRAIN_LOOP_STAND_IN = """
import json, os, signal, subprocess, sys, time
from pathlib import Path

mode, record, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
out = Path(args[args.index("--output") + 1])
if mode == "quick":
    config = {"model": "stand_in", "image_size": 32, "compile": False, "batch_size": 8, "bf16": False}
    out.write_text(json.dumps({"config": config, "bare_img_s": 1.0}))
    sys.exit(0)
# "stuck": a child in a session of its own that ignores SIGTERM, as a torchrun rank hung in a collective
child = subprocess.Popen(["sleep", "300"]) if mode == "hang" else subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
    start_new_session=True)


def stop(signum, frame):
    time.sleep(1)
    (record / "stand_in_stopped.json").write_text(json.dumps({"work_folder_there": out.parent.is_dir()}))
    sys.exit(75)


signal.signal(signal.SIGTERM, stop)
(record / "stand_in_pids.tmp").write_text(f"{os.getpid()} {child.pid}")
(record / "stand_in_pids.tmp").rename(record / "stand_in_pids")
time.sleep(300)
"""


def stand_in_python(tmp_path: Path, mode: str) -> Path:
    """This suite's interpreter, with benchmarks/train_loop.py stood in for (TRAIN_LOOP_STAND_IN)."""
    (tmp_path / "train_loop_stand_in.py").write_text(TRAIN_LOOP_STAND_IN)
    python = tmp_path / "python"
    python.write_text(f"""#!/usr/bin/env bash
case "${{1:-}}" in
  */benchmarks/train_loop.py) shift; exec "{sys.executable}" "{tmp_path}/train_loop_stand_in.py" {mode} \\
    "{tmp_path}" "$@" ;;
esac
exec "{sys.executable}" "$@"
""")
    python.chmod(0o755)
    return python


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop, group", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)])
def test_gpu_check_stopped_by_a_signal_ends_its_stage_before_removing_its_folder(tmp_path, stop, group):
    """SIGTERM to the script alone (a scheduler's), to its whole process group (`timeout`'s: the stage's shell dies
    at once and its processes are left to init) or SIGINT (Ctrl-C): the running stage's processes are signalled and
    waited for, the stage is recorded as stopped, then the work folder is removed, at once rather than when the stage
    ends; nothing is left running (on a GPU machine: train.py holding the GPU, in a folder removed under it)."""
    python, work = stand_in_python(tmp_path, "hang"), tmp_path / "work"
    work.mkdir()

    def as_launched():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal
        if group:
            os.setpgid(0, 0)  # a group of its own, as `timeout` gives the command it runs

    proc = subprocess.Popen(["bash", str(GPU_CHECK), "--cpu", "--stages", "throughput", "--out",
                             str(tmp_path / "gpu_check.json")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHON": str(python), "TMPDIR": str(work)},
                            preexec_fn=as_launched)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stand_in_pids").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the stage never started"
            time.sleep(0.1)
        pids = [int(pid) for pid in (tmp_path / "stand_in_pids").read_text().split()]  # the stage, its child
        os.killpg(proc.pid, stop) if group else proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not [pid for pid in pids if running(pid)], stderr
    assert json.loads((tmp_path / "stand_in_stopped.json").read_text()) == {"work_folder_there": True}
    assert list(work.iterdir()) == []
    assert proc.returncode == 128 + stop, stderr
    assert f"== stopped by {stop.name}: ending the stages running" in stderr, stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stages"]["throughput"]["status"] == 128 + stop and not report["pending"], report
    assert report["stages"]["throughput"]["stopped_by"] == stop.name


def test_gpu_check_dry_run_never_writes_over_the_gpu_figures(tmp_path):
    """`--cpu` without --out writes results/gpu_check_cpu.json: results/gpu_check.json holds the GPU run that
    BENCHMARKS.md cites (a copy of the script, its bare loop stood in for)."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    for name in ("gpu_check.sh", "gpu_check_report.py"):
        shutil.copy(ROOT / "benchmarks" / name, root / "benchmarks" / name)
    gpu_figures = root / "benchmarks" / "results" / "gpu_check.json"
    gpu_figures.write_text('{"mode": "gpu"}\n')
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--cpu", "--stages", "throughput"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": str(stand_in_python(tmp_path, "quick")),
                               "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert gpu_figures.read_text() == '{"mode": "gpu"}\n'
    dry = json.loads((root / "benchmarks" / "results" / "gpu_check_cpu.json").read_text())
    assert dry["mode"].startswith("cpu dry run") and dry["stages"]["throughput"]["status"] == 0
    shown = subprocess.run(["bash", str(GPU_CHECK), "--help"], capture_output=True, text=True, check=True).stdout
    assert "benchmarks/results/gpu_check_cpu.json" in shown


REPORT = ROOT / "benchmarks" / "gpu_check_report.py"
LAUNCHER_FAILED = """The following values were not passed to `accelerate launch` and had defaults used instead:
error: --model /w/train_recipe/final: no such folder (give RUN/final, RUN/checkpoints/step_N or a Hub id OWNER/NAME)
RuntimeError: error: --model /w/train_recipe/final: no such folder


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
""" + "".join(f"""  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line {n}, in f{n}
    f{n}()
""" for n in range(1040, 1050)) + """subprocess.CalledProcessError: Command '['/venv/bin/python', 'validate.py']' \
returned non-zero exit status 1.
"""


def test_gpu_check_log_tail_shows_the_error_not_the_launchers_traceback():
    """A failed stage's log_tail (and what the script prints): the error of the script accelerate launched, not 15
    lines of accelerate's own traceback."""
    tail = module(REPORT).log_tail(LAUNCHER_FAILED)
    assert tail[1].startswith("error: --model /w/train_recipe/final: no such folder"), tail
    assert tail[-1] == "(accelerate launch's traceback left out: the command returned non-zero exit status 1)"
    assert not [line for line in tail if "accelerate/commands/launch.py" in line or "CalledProcessError" in line]
    other = [f"line {n}" for n in range(40)]  # any other log: its last 15 lines
    assert module(REPORT).log_tail("\n".join(other)) == other[-15:]
    shown = subprocess.run([sys.executable, str(REPORT), "--tail", "/dev/stdin"], input=LAUNCHER_FAILED,
                           capture_output=True, text=True, check=True).stdout  # what the script prints
    assert shown.splitlines() == tail


def test_gpu_check_report_reads_a_failed_stages_log_cut_inside_a_character(tmp_path):
    """A stage killed while tqdm drew its bar leaves a log that ends inside a UTF-8 character ('\u2588' cut to two
    bytes): the report still writes the JSON, that stage's tail with a replacement character, the others as they
    are; every later report of the run reads the same log."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "machine.json").write_text('{"cpu_cores": 16}')
    (tmp_path / "stages" / "throughput.json").write_text('{"status": 137, "seconds": 5, "started_s": 0}')
    (tmp_path / "throughput.log").write_bytes("error: killed\ntrain:  50%|".encode() + "\u2588".encode()[:2])
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPORT), str(tmp_path), str(out), "0", "10", "256", "4000", "0.05", "8",
                           "tree throughput"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = json.loads(out.read_text())["stages"]["throughput"]
    assert stage["status"] == 137 and stage["log_tail"] == ["error: killed", "train:  50%|\ufffd"], stage


def test_gpu_check_goal_rate_is_over_the_epochs():
    """The steady rate the goal is judged on: the epochs' images over their seconds. The mean of the epochs' rates
    weighs a fast epoch as much as a slow one: 6,400 images in 1 s and in 2 s are 4,267 img/s, not 4,800."""
    epochs = [{"images_per_sec": 6400 / t, "train_s": t, "first_batch_s": 0.2, "data_wait_frac": w / t,
               "data_wait_steady_frac": (w - 0.2) / (t - 0.2), "images_per_sec_steady": 6400 / (t - 0.2)}
              for t, w in ((1.2, 0.3), (2.2, 0.2))]
    together = module(REPORT).over_epochs(epochs)
    assert together == {"images_per_sec": round(12800 / 3.4, 1), "images_per_sec_steady": round(12800 / 3.0, 1),
                        "data_wait_frac": round(0.5 / 3.4, 3), "data_wait_steady_frac": round(0.1 / 3.0, 3)}


def test_gpu_check_workers_feed_rate_is_measured_or_marked_not(tmp_path):
    """workers.feed_img_s is the fastest steady epoch of train_recipe or train_8cores in the same run, with its
    source; without either it is null and marked not measured, and so are the cores to feed it: no assumed rate."""
    report = module(REPORT)
    assert report.feed_rate(tmp_path) == (None, None)
    (tmp_path / "stages").mkdir()
    (tmp_path / "machine.json").write_text("{}")
    (tmp_path / "stages" / "workers.json").write_text('{"status": 0, "seconds": 3, "started_s": 0}')
    (tmp_path / "workers_launch.json").write_text('{"cpus": "0,1", "beside": "", "feed_img_s": null, '
                                                  '"feed_source": null}')
    for name, workers in (("workers_1", 1), ("workers256_1", 1)):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "config": {"num_workers": workers, "image_size": 32},
            "pipelines": {"train": {"ours_img_s": 500.0, "img_s_per_core": 500.0}}}))
    out = tmp_path / "gpu_check.json"
    report.main([str(tmp_path), str(out), "1", "3", "256", "4000", "0.05", "8", "workers"])
    stage = json.loads(out.read_text())["stages"]["workers"]
    assert stage["feed_img_s"] is None and stage["feed_source"] == "not measured", stage
    assert stage["cores_per_gpu"] is None and stage["cores_per_gpu_256"] is None
    assert stage["cores_at_goal"] == stage["cores_at_goal_256"] == 4000 / 500 + 1
    for run, rates in (("train_8cores", (90.0, 410.0, 400.0)), ("train_recipe", (80.0, 405.5))):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps({"images_per_sec_steady": r}) + "\n"
                                                              for r in rates))
    assert report.feed_rate(tmp_path) == (410.0, "train_8cores")


def test_loop_overhead_refuses_to_compare_across_devices(monkeypatch):
    """Where CUDA is visible the bare loop would run on the GPU and train.py (accelerate_configs/cpu.yaml) on the
    CPU, and their ratio compare two devices: refused in one line, before anything runs."""
    train_loop = module(ROOT / "benchmarks" / "train_loop.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_loop, "bare_loop", lambda *args, **kwargs: pytest.fail("the bare loop ran"))
    with pytest.raises(SystemExit) as stopped:
        train_loop.main(["--steps", "1"])
    assert str(stopped.value).startswith("error: train.py's side runs on the CPU: on a GPU machine add "
                                         "--synthetic_only")
    assert "\n" not in str(stopped.value)


def test_loader_benchmark_peers_are_timed_where_installed(ilsvrc_tree, preprocessed, tmp_path):
    """--peers dali,ffcv: a peer that does not import (as in CI) is reported "not installed", never an error;
    one that does is timed on the same files; train is also timed at --peer_size; unknown names are an error."""
    out = tmp_path / "peers.json"
    proc = loader("--data_dir", ilsvrc_tree, "--dataset", preprocessed, "--peers", "dali,ffcv", "--peer_size", 48,
                  "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["pipelines"]) == {"train", "train_48", "eval"}
    assert set(report["peers"]) == {"dali", "ffcv_jpg", "ffcv_imagenet"}
    for name, peer in report["peers"].items():
        module = "nvidia.dali" if name == "dali" else "ffcv"
        installed = importlib.util.find_spec(module) is not None
        assert peer["status"] == ("measured" if installed else "not installed"), (name, peer["status"])
        if installed:
            assert peer["pipelines"]["train_48"]["img_s"] > 0
    assert "not installed" in proc.stdout or all(p["status"] == "measured" for p in report["peers"].values())
    assert len(report["load_average"]) == 3
    proc = loader("--data_dir", ilsvrc_tree, "--dataset", preprocessed, "--peers", "dali,nvjpeg")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: --peers dali,nvjpeg: unknown nvjpeg; use dali, ffcv"


def test_preprocess_benchmark_zip_in_place_against_unzip(tmp_path):
    out = tmp_path / "zip.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "preprocess.py"), "--compare", "zip",
                           "--images", "8", "--num_classes", "2", "--long_side", "0", "--num_proc", "1",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    in_place, unzipped = report["in_place"], report["unzip_then_preprocess"]
    assert report["images"] == 8 + 2 + 4  # train, one val image per class, test
    assert in_place["seconds"] > 0 and unzipped["seconds"] > unzipped["unzip_seconds"] > 0
    assert 0 < in_place["peak_disk"] < unzipped["peak_disk"]  # the unzipped tree is disk the zip route never uses
    assert "zip read in place" in proc.stdout and "unzip + preprocess.py" in proc.stdout


def test_preprocess_benchmark_hub_parquet_against_the_tree(tmp_path):
    """The same images as the Hub's Parquet (shuffled train rows: the spool) and as the Kaggle tree: both stored
    whole, the spool's disk on the Parquet side."""
    out = tmp_path / "parquet.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "preprocess.py"), "--compare", "parquet",
                           "--images", "8", "--num_classes", "2", "--long_side", "0", "--num_proc", "1",
                           "--rows_per_group", "3", "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["images"] == report["tree"]["images"] == 8 + 2 + 4  # train, one val image per class, test
    assert report["in_place"]["peak_disk"] > 0 and report["tree"]["peak_disk"] > 0
    assert report["ratio"]["seconds"] == report["in_place"]["seconds"] / report["tree"]["seconds"] > 0
    assert "Hub Parquet read in place" in proc.stdout and "ratio Parquet / tree" in proc.stdout


def test_preprocess_benchmark_peak_rss_is_the_measured_commands_own(monkeypatch):
    """Linux starts a child's ru_maxrss at its parent's peak (kept across exec), and the benchmark grows to ~1 GB
    making its inputs: run()'s figure must be the command's own peak, not the benchmark's."""
    spec = importlib.util.spec_from_file_location("bench_preprocess", ROOT / "benchmarks" / "preprocess.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its own name: "preprocess" is the root script's
    spec.loader.exec_module(bench)
    held = b"\x01" * (400 << 20)  # written, so resident: this process's peak is at least 400 MB
    _, idle, stdout = bench.run([sys.executable, "-c", "print('ok')"])
    _, grown, _ = bench.run([sys.executable, "-c", "b = b'x' * (150 << 20)"])
    assert stdout == "ok\n"
    assert idle < 100 << 20 < len(held), idle  # an interpreter alone: ~10 MB
    assert 150 << 20 < grown < 250 << 20, grown  # its own 150 MB, not this process's 400
    with pytest.raises(SystemExit, match="exited 3"):
        bench.run([sys.executable, "-c", "import sys; sys.exit(3)"])
    del held


def test_ring_benchmark_reports_both_hand_offs():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ring.py"), "--batch_size", "4", "--image_size",
                           "16", "--passes", "1", "--batches", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ring_fallbacks"] == 0
    for side in ("ring", "fresh"):
        for main in ("copies out", "only receives"):
            assert report[f"{side}, main {main}"]["worker_us_per_image"] > 0
