"""What keeps a GPU busy, checked on the CPU: host syncs and collectives per log interval on 2 processes, graphs
compiled across progressive resizing and evaluation, SIGTERM as a stop signal (also before the heavy imports), the
DataLoader worker default and the shared-memory check."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from test_fsdp import free_port
from test_train import ROOT, ok, run, train_cmd

PROBE = ROOT / "benchmarks" / "sync_probe.py"  # train.py's main() with its host reads and collectives counted


def probed(tmp_path: Path, cmd: list[str]) -> list[dict]:
    """Run train.py's `cmd` (from train_cmd) under benchmarks/sync_probe.py; the counts of each rank. Its torch.compile
    backend is "eager": the graphs dynamo captures are the ones Inductor would compile."""
    script = cmd.index(str(ROOT / "train.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ok(subprocess.run([*cmd[:script], str(PROBE), "--out_dir", str(tmp_path / "probe"), "--compile_backend", "eager",
                       *cmd[script:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600))
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "probe").glob("rank*.json"))]


def test_one_host_sync_per_log_interval_on_two_processes(digits_dataset, tmp_path):
    """2 gloo processes, 40 optimizer steps logged every 10: the stop agreement, the NaN guard and the running loss
    share one all-reduce and one read per interval (+1 at the epoch's end), where there was one of each per step.
    The loading runs in a worker process, as on a GPU, where its reads of host tensors wait for no device."""
    steps, every = 40, 10
    launch = ("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    counts = probed(tmp_path, train_cmd(digits_dataset, tmp_path / "run", "--max_train_steps", steps,
                                        "--log_every_steps", every, "--epochs", 5, "--num_workers", 1,
                                        launcher=launch))
    assert len(counts) == 2
    for rank in counts:
        assert rank["steps"] == steps
        # + the epoch's end, + the DataLoader iterator's base seed (a host tensor, read once an epoch)
        assert 0 < rank["host_reads"] <= steps // every + 2, rank
        assert rank["cuda_syncs"] is None and rank["cuda_sync_sites"] == {}  # counted on CUDA only
        assert 0 < rank["collectives"] <= steps // every + 1, rank


def test_compiled_graphs_are_bounded_across_progressive_resizing(preprocessed, tmp_path):
    """--compile with a 16 -> 32 px ramp over 3 epochs: one static graph per train size and one for evaluation
    (its smaller last batch runs eagerly), never a dynamic-shape graph or one per eval batch size."""
    out = tmp_path / "run"
    counts = probed(tmp_path, train_cmd(preprocessed, out, "--compile", "--epochs", 3, "--min_image_size", 16,
                                        "--ramp_start_epoch", 0, "--ramp_end_epoch", 2, "--batch_size", 5))
    sizes = {row["image_size"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert len(sizes) >= 2, sizes
    assert counts[0]["graphs"] == len(sizes) + 1


def test_sigterm_checkpoints_and_exits_75_then_resumes_bitwise(preprocessed, tmp_path):
    """SIGTERM (preemption) like SIGUSR1: checkpoint at the next step, the stop record names it, status 75, and the
    resumed run ends on the uninterrupted run's weights bit for bit; the SIGTERM is sent while train.py is still
    importing, and is remembered, not fatal."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    common = ("--epochs", 2, "--save_every_steps", 1, "--keep_last", 100)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(train_cmd(preprocessed, out, *common), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # python is up, torch is still importing
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == train.STOPPED_STATUS, stderr[-3000:]
    record = json.loads((out / train.STOPPED_RECORD).read_text())
    assert record["signal"] == "SIGTERM" and record["exit_status"] == 75 and record["step"] >= 1
    assert Path(record["checkpoint"]).name == f"step_{record['step']:08d}"
    ok(run(train_cmd(preprocessed, out, *common, "--resume_from_checkpoint", "latest")))
    ok(run(train_cmd(preprocessed, straight, *common)))
    last = max(p.name for p in (straight / "checkpoints").glob("step_*"))
    assert last > Path(record["checkpoint"]).name, "stopped too late to test anything"
    mine, reference = (load_file(run_dir / "checkpoints" / last / "model.safetensors") for run_dir in (out, straight))
    assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)


def test_worker_default_follows_the_cores_of_each_local_process(monkeypatch):
    said = []
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert train.loader_workers(-1, print_fn=said.append) == max(0, cores - 1)
    assert said and said[0].startswith(f"--num_workers {max(0, cores - 1)}: {cores} cores")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert train.loader_workers(-1, print_fn=said.append) == 0  # one core each: load in the process itself
    assert train.loader_workers(3, print_fn=said.append) == 3 and len(said) == 2  # an explicit count is kept, silently


def test_shared_memory_too_small_is_one_line(tmp_path):
    batch = 128 * 3 * 224 * 224
    with pytest.raises(SystemExit) as e:
        train.check_shm(8, 10**15, 1, shm=str(tmp_path))  # more than any disk holds
    message = str(e.value)
    assert message.startswith(f"error: {tmp_path} has ") and "--shm-size=" in message and "--num_workers" in message
    assert "\n" not in message
    train.check_shm(0, 10**15, 1, shm=str(tmp_path))  # no workers: nothing to check
    train.check_shm(1, batch, 1, shm=str(tmp_path))  # ~193 MiB fits
    # the eval workers' prefetched batches count beside the train workers' ring slots, which stay allocated
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(SystemExit, match=r"x 10 batches \(6 train slots, 4 eval\)"):
        train.check_shm(1, free // 8, 1, shm=str(tmp_path))  # the ring's 6 would fit, 6 + 4 do not


def test_save_every_minutes_checkpoints_inside_an_epoch(preprocessed, tmp_path):
    """A time-based checkpoint bounds what a SIGKILL costs: with the clock always due (0.0001 min), every check step
    (--log_every_steps 1) inside the epoch writes one; with it off, only the epoch ends do."""
    def steps_saved(out):
        return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))

    timed, untimed = tmp_path / "timed", tmp_path / "untimed"
    ok(run(train_cmd(preprocessed, timed, "--epochs", 1, "--batch_size", 4, "--save_every_minutes", 0.0001,
                     "--keep_last", 100)))
    ok(run(train_cmd(preprocessed, untimed, "--epochs", 1, "--batch_size", 4, "--save_every_minutes", 0,
                     "--keep_last", 100)))
    epoch_end = steps_saved(untimed)
    assert len(epoch_end) == 1 and epoch_end[0] >= 3, "the fixture must give an epoch of several steps"
    assert steps_saved(timed) == list(range(1, epoch_end[0] + 1))


def test_sync_probe_counts_each_cuda_sync_warning_with_its_line():
    """CUDA's sync flags arrive as warnings: every one is counted while training (not once per source line, as the
    default filter would show them), with the line of this project that made it; other warnings print as before."""
    spec = importlib.util.spec_from_file_location("sync_probe", PROBE)
    sync_probe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sync_probe  # dataclasses resolve annotations through it
    spec.loader.exec_module(sync_probe)
    probe = sync_probe.Probe()
    probe.counts["cuda_syncs"] = 0  # as on a CUDA machine
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        sync_probe.count_cuda_warnings(probe)

        def flagged():  # what torch raises from C++ when set_sync_debug_mode("warn") meets a sync
            warnings.warn(f"{sync_probe.CUDA_SYNC_WARNING} (Triggered internally at CUDAFunctions.cpp:1)")
        flagged()  # not training: not counted
        probe.active = True
        for _ in range(3):
            flagged()
        warnings.warn("something else")
        probe.active = False
    assert probe.counts["cuda_syncs"] == 3
    line = flagged.__code__.co_firstlineno + 1
    assert probe.sites == {f"tests/test_gpu_ready.py:{line}": 3}
    assert [str(w.message) for w in shown] == ["something else"]
