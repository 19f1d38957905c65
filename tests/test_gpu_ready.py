"""What keeps a GPU busy, checked on the CPU: host syncs and collectives per log interval on 2 processes, graphs
compiled across progressive resizing and evaluation, SIGTERM as a stop signal (also before the heavy imports and
during an evaluation), the DataLoader worker default and the shared-memory check."""
from __future__ import annotations

import contextlib
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
from accelerate import Accelerator
from imagenet_trainer.bad_samples import BadSamples
from imagenet_trainer.config import parse_config
from imagenet_trainer.data.ring import RingBatch, host_tensors
from test_fsdp import free_port
from test_train import ROOT, ok, rows, run, train_cmd

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
    counts = probed(tmp_path, train_cmd(digits_dataset, tmp_path / "run", "--max_train_steps", steps,
                                        "--log_every_steps", every, "--epochs", 5, "--num_workers", 1,
                                        launcher=launch_flags(2)))
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
    assert record["seconds_after_signal"] > 1  # counted from the signal's arrival, during the imports
    assert Path(record["checkpoint"]).name == f"step_{record['step']:08d}"
    ok(run(train_cmd(preprocessed, out, *common, "--resume_from_checkpoint", "latest")))
    ok(run(train_cmd(preprocessed, straight, *common)))
    last = max(p.name for p in (straight / "checkpoints").glob("step_*"))
    assert last > Path(record["checkpoint"]).name, "stopped too late to test anything"
    mine, reference = (load_file(run_dir / "checkpoints" / last / "model.safetensors") for run_dir in (out, straight))
    assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after "pid (name)": state, parent pid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(proc_stat(pid)[1])


def blocked_signals(pid: int) -> set[signal.Signals]:
    mask = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("SigBlk:")).split()[1], 16)
    return {sig for sig in signal.Signals if mask >> (sig - 1) & 1}


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, at any depth (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = parent_pid(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # exited meanwhile
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found, frontier = found + children, children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child whose parent died before reaping it waits for init to do so)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


def launch_flags(processes: int) -> tuple[str, ...]:
    """`accelerate launch` flags for 1 process (its simple launcher) or 2 (torchrun, gloo on a free port)."""
    return ("--cpu", "--num_processes", "1") if processes == 1 else (
        "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))


def newest_step(out: Path) -> int:
    return max((int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")), default=0)


def test_sigterm_to_every_process_of_the_job_still_checkpoints_and_exits_75(preprocessed, tmp_path):
    """SIGTERM to every process of the launch, as SLURM's preemption sends it: the DataLoader workers and the server
    that forks them have it blocked and load on (here they get it first, and train.py goes on for 10 more steps),
    then train.py checkpoints at its next step (or at the epoch-end checkpoint it is writing) and exits 75 instead of
    failing on a loader whose workers died under it (torch's own handler ends a worker on a SIGTERM from any process
    but its parent)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(train_cmd(preprocessed, out, "--epochs", 200, "--save_every_steps", 1, "--keep_last", 3,
                                      "--num_workers", 2), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while newest_step(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the workers are loading once a checkpoint after the first step exists
        below = descendants(proc.pid)  # the server, its train and eval workers, multiprocessing's resource tracker
        assert len(below) >= 3, below
        for pid in below:
            os.kill(pid, signal.SIGTERM)
        signalled = newest_step(out)
        while newest_step(out) < signalled + 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and newest_step(out) >= signalled + 10, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == train.STOPPED_STATUS, stderr[-3000:]
    record = json.loads((out / train.STOPPED_RECORD).read_text())
    # >=, not >: a signal landing while the epoch-end checkpoint (the one seen above) is written stops at its step
    assert record["signal"] == "SIGTERM" and record["step"] >= signalled + 10
    assert Path(record["checkpoint"]).name == f"step_{record['step']:08d}"


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_to_the_launcher_alone_checkpoints_and_leaves_nothing_running(preprocessed, tmp_path, processes):
    """SIGTERM to `accelerate launch` only, as `docker stop` and `kubectl delete` send it to a container's first process
    and a scheduler to the process it started: the launcher passes it on, train.py checkpoints at its next step and
    stops, and no process of the launch is left. accelerate 1.15's one-process launcher dies of it at once and leaves
    train.py training with no one to stop it; 1.16 passes it on and ends what is still running 5 s later."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: waiting for the launcher must not wait for its children
    with log.open("w") as stderr:
        cmd = train_cmd(preprocessed, out, "--epochs", 200, "--save_every_steps", 1, "--keep_last", 3,
                        "--num_workers", 1, launcher=launch_flags(processes))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    below: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while newest_step(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        below = descendants(proc.pid)  # train.py (a torchrun agent's ranks), the worker server, its workers
        assert len(below) >= 3 * processes, (below, log.read_text()[-3000:])
        signalled = newest_step(out)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        gone = time.monotonic() + 15  # a worker server or resource tracker sees its parent's exit a moment later
        while (left := [pid for pid in below if running(pid)]) and time.monotonic() < gone:
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the launcher exited: {left}\n{log.read_text()[-3000:]}"
    assert proc.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]  # the launcher's own status: SIGTERM's
    assert (out / train.STOPPED_RECORD).is_file(), log.read_text()[-3000:]  # none: SIGKILLed before the checkpoint
    record = json.loads((out / train.STOPPED_RECORD).read_text())
    assert record["signal"] == "SIGTERM" and record["exit_status"] == train.STOPPED_STATUS
    # within the launcher's SIGKILL; 0.0 when the signal came as the due checkpoint (every step here) was finishing
    assert 0 <= record["seconds_after_signal"] < (5 if processes == 1 else 30)
    assert record["step"] >= signalled and (out / "checkpoints" / f"step_{record['step']:08d}").is_dir()


@pytest.mark.parametrize("processes, epochs", [(2, 3), (1, 2)])
def test_sigterm_during_evaluation_ends_it_at_the_next_batch_and_the_resume_evaluates_first(preprocessed, tmp_path,
                                                                                          processes, epochs):
    """A stop signal during an evaluation (tens of seconds on ImageNet: past a launcher's or a container's 5-30 s of
    grace) ends it at the next batch on every rank; the trained epoch is checkpointed with its evaluation pending,
    and the resume evaluates it first: the run ends as an uninterrupted one, the same metrics rows and the same
    weights bit for bit. The last rank alone signals itself, before the second batch of the second evaluation: a
    middle one on 2 processes, the run's last (all steps done) on 1."""
    common = ("--epochs", epochs, "--batch_size", 2, "--num_workers", 1)
    out, straight = tmp_path / "run", tmp_path / "straight"
    cmd = train_cmd(preprocessed, out, *common, launcher=launch_flags(processes))
    cmd[cmd.index(str(ROOT / "train.py"))] = str(ROOT / "tests" / "signal_during_eval.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SIGNAL_DURING_EVAL": f"{processes - 1},2,1"}
    stopped = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert (out / train.STOPPED_RECORD).is_file(), stopped.stderr[-3000:]
    ok(run(train_cmd(preprocessed, straight, *common, launcher=launch_flags(processes))))
    reference = rows(straight)
    steps_per_epoch = reference[0]["step"]
    record = json.loads((out / train.STOPPED_RECORD).read_text())
    assert record["signal"] == "SIGTERM" and record["exit_status"] == train.STOPPED_STATUS
    assert record["step"] == 2 * steps_per_epoch  # the second epoch's end: trained, checkpointed, not evaluated
    assert Path(record["checkpoint"]).name == f"step_{2 * steps_per_epoch:08d}"
    used = [json.loads((out / f"eval_batches_rank{r}.json").read_text()) for r in range(processes)]
    assert all(u == used[0] for u in used) and used[0][1] == 1 and used[0][0] >= 2, used  # all left at that batch
    assert len(rows(out)) == 1  # the first epoch's row only
    resumed = ok(run(train_cmd(preprocessed, out, *common, "--resume_from_checkpoint", "latest",
                               launcher=launch_flags(processes))))
    assert "first the evaluation a stop signal cut short" in resumed.stdout + resumed.stderr
    keys = ("epoch", "step", "val_top1", "val_top5", "val_n", "val_loss", "image_size")
    assert [{k: r[k] for k in keys} for r in rows(out)] == [{k: r[k] for k in keys} for r in reference]
    assert [r["train_loss"] for r in rows(out)] == pytest.approx([r["train_loss"] for r in reference], rel=1e-5)
    last = f"step_{reference[-1]['step']:08d}"
    mine, theirs = (load_file(d / "checkpoints" / last / "model.safetensors") for d in (out, straight))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert (out / "final" / "model.safetensors").is_file()
    assert not list((out / "checkpoints").glob(".*"))  # the step saved again replaced the earlier save, nothing left


SIGNAL_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
from accelerate import Accelerator
import train
saved = Accelerator.save_state
def save_state(self, output_dir=None, **kwargs):  # one rank is signalled as the step-2 checkpoint is written
    out = saved(self, output_dir, **kwargs)
    if str(output_dir).endswith("step_00000002") and self.process_index == self.num_processes - 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return out
Accelerator.save_state = save_state
train.run_and_close(train.main, sys.argv[1:])
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stop_signal_during_a_periodic_checkpoint_stops_on_it(preprocessed, tmp_path, processes):
    """A preemption's SIGTERM while a --save_every_steps checkpoint is written (seconds for a large model): the run
    stops on that checkpoint, as soon as it is sealed, not a step and another whole checkpoint later, which a grace
    time may not leave."""
    out = tmp_path / "run"
    cmd = train_cmd(preprocessed, out, "--epochs", 1, "--batch_size", 2, "--num_workers", 0, "--save_every_steps", 2,
                    launcher=launch_flags(processes))
    script = tmp_path / "signal_during_save.py"
    script.write_text(SIGNAL_DURING_SAVE)
    cmd[cmd.index(str(ROOT / "train.py"))] = str(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    stopped = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert (out / train.STOPPED_RECORD).is_file(), stopped.stderr[-3000:]
    record = json.loads((out / train.STOPPED_RECORD).read_text())
    assert record["exit_status"] == train.STOPPED_STATUS
    assert (record["signal"], record["step"], Path(record["checkpoint"]).name) == ("SIGTERM", 2, "step_00000002")
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000002"]


def test_worker_default_follows_the_cores_of_each_local_process(monkeypatch):
    said = []
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert train.loader_workers(-1, print_fn=said.append) == max(0, cores - 1)
    assert said and said[0].startswith(f"--num_workers {max(0, cores - 1)}: {cores} cores")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert train.loader_workers(-1, print_fn=said.append) == 0  # one core each: load in the process itself
    assert train.loader_workers(3, print_fn=said.append) == 3 and len(said) == 2  # an explicit count is kept, silently


def cgroup_tree(root, own: str, files: dict) -> Path:
    """A /sys/fs/cgroup tree with ``files`` ({path under root: text}) and the /proc/self/cgroup text ``own``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root.parent / "self_cgroup").write_text(own)
    return root.parent / "self_cgroup"


def test_the_worker_default_keeps_to_a_containers_cpu_quota(tmp_path, monkeypatch):
    """docker --cpus and a Kubernetes CPU limit set a CFS quota, not the affinity: every core of the host stays in
    it, and the default was a worker per host core, throttled to the quota."""
    from imagenet_trainer import worker_processes
    v2 = tmp_path / "v2" / "fs"
    own = cgroup_tree(v2, "0::/kubepods/pod1/c1\n", {"cpu.max": "max 100000\n",  # the host's root: none
                                                     "kubepods/pod1/cpu.max": "250000 100000\n",
                                                     "kubepods/pod1/c1/cpu.max": "max 100000\n"})
    assert worker_processes.cpu_quota(v2, own) == 2.5  # a parent's limit holds for the cgroups under it
    v1 = tmp_path / "v1" / "fs"  # a v1 container: the host's path in /proc/self/cgroup, its own cgroup the root
    own = cgroup_tree(v1, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
                      {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert worker_processes.cpu_quota(v1, own) == 0.5
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert worker_processes.cpu_quota(v1, own) is None
    assert worker_processes.cpu_quota(tmp_path / "none", tmp_path / "no_such_file") is None  # not Linux
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(worker_processes, "cpu_quota", lambda: 0.5)
    assert worker_processes.available_cores() == 1 and train.loader_workers(-1, print_fn=print) == 0
    monkeypatch.setattr(worker_processes, "cpu_quota", lambda: cores + 8.0)  # above the affinity: the affinity
    assert worker_processes.available_cores() == cores


def test_the_early_server_start_reads_the_worker_count_the_script_will_use(monkeypatch, tmp_path, capsys):
    """train.py and validate.py start the workers' fork server with their first lines, before their config parser
    exists: when the command line gives workers, as the parser will (a flag over a recipe's key over the default)."""
    from imagenet_trainer import worker_processes

    starts = []
    monkeypatch.setattr(worker_processes, "worker_context", lambda: starts.append(True))

    def starts_for(argv, local_processes=1):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
        starts.clear()
        worker_processes.start_early(argv)
        return bool(starts)

    cores = len(os.sched_getaffinity(0))
    no_workers, broken = tmp_path / "no_workers.yaml", tmp_path / "broken.yaml"
    no_workers.write_text("model: resnet50\nnum_workers: 0\n")
    broken.write_text("num_workers: [\n")
    assert not starts_for(["--model", "resnet50", "--num_workers", "0"])
    assert starts_for(["--model", "resnet50", "--num_workers=2"])
    assert not starts_for(["--config", str(no_workers)])
    assert starts_for(["--config", str(no_workers), "--num_workers", "1"])  # the flag wins over the recipe
    assert starts_for([]) == (cores > 1)  # the default: the cores less one for the process itself
    assert not starts_for([], local_processes=cores)  # a core each: no workers
    starts.clear()
    worker_processes.start_early([], default_workers=0)  # a script whose default is no workers (loader.py's)
    assert not starts
    # what the script's parser will reject starts nothing and says nothing (the parser says it, once); nor --help
    for argv in (["--num_workers", "two"], ["--num_workers"], ["--config", str(broken)],
                 ["--config", str(tmp_path / "missing.yaml")], ["--num_workers", "2", "--help"], ["-h"]):
        assert not starts_for(argv), argv
    assert capsys.readouterr() == ("", "")


def test_loader_workers_start_from_a_server_not_from_the_training_process(preprocessed):
    """train.py's loaders (train through the ring, and eval) fork their workers from the forkserver, not from the
    training process: a worker forked there while a gloo or NCCL thread held the interpreter's thread-state lock
    hung before it ran, and every rank with it (Python < 3.11.10, CPython gh-112275): 2 of about 36 2-process CPU
    launches under load hung at their first evaluation."""
    cfg = parse_config(train.TrainConfig, ["--model", "blocknet_tiny", "--dataset", str(preprocessed),
                                           "--num_workers", "1", "--batch_size", "4", "--image_size", "32"])
    ds, _ = train.load_data(cfg.dataset, cfg.eval_split)
    bad = BadSamples({"train": ds["train"], cfg.eval_split: ds[cfg.eval_split]}, cfg.max_bad_samples)
    data_cfg = {"crop_pct": 0.875, "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406)}  # timm's, as main's
    loaders = train.build_loaders(cfg, ds, data_cfg, Accelerator(cpu=True), bad)
    for loader, kind in zip(loaders, (RingBatch, tuple)):  # train's through the ring
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
        batches = iter(loader)
        batch = next(batches)
        assert isinstance(batch, kind)
        images, labels = host_tensors(batch)
        assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)
        (worker,) = loader._iterator._workers  # persistent workers: the loader keeps its iterator
        server = parent_pid(worker.pid)
        assert server != os.getpid() and parent_pid(server) == os.getpid()
        for pid in (server, worker.pid):  # the stop signals are train.py's to act on (SLURM signals every process)
            assert blocked_signals(pid) >= {signal.SIGTERM, signal.SIGUSR1}
        assert not blocked_signals(os.getpid()) & {signal.SIGTERM, signal.SIGUSR1}
        del batches


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
    with pytest.raises(SystemExit, match=r"x 10 batches \(6 train slots, 4 eval\) \+ 2 in hand\)"):
        train.check_shm(1, free // 8, 1, shm=str(tmp_path))  # the ring's 6 would fit, 6 + 4 do not
    with pytest.raises(SystemExit):  # the workers' 10 batches fit, not the 2 the process holds beside them
        train.check_shm(1, free // 11, 1, shm=str(tmp_path))
    train.check_shm(1, free // 13, 1, shm=str(tmp_path))


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


def test_sync_probe_help_prints_its_flags():
    """README's Troubleshooting names sync_probe.py: its --help (no training script after it) is help, status 0."""
    proc = subprocess.run([sys.executable, str(PROBE), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--out_dir" in proc.stdout and "--compile_backend" in proc.stdout, proc.stderr


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
