"""Clusters on one CPU machine: slurm/train.sbatch with stand-ins for srun/scontrol, two machines on loopback, the
pre-timeout signal and its requeue, and a checkpoint of 2 processes resumed on 1 (elastic resume).

The stand-in srun runs the script's per-node command once per node, in parallel, on this machine (SLURM_NODEID
0..N-1); the stand-in scontrol expands a comma-separated node list and records requeues. Everything else is real:
`accelerate launch` per "node", gloo over 127.0.0.1, train.py, its checkpoints."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from imagenet_trainer import stopping
from imagenet_trainer.runinfo import atomic_write_text
from imagenet_trainer.stop_signals import STOPPED_RECORD
from test_readme import inline_spans
from test_train import ACCELERATE, ROOT, ok, rows, run, train_cmd

SBATCH = ROOT / "slurm" / "train.sbatch"
# 23 train images of the fixture: 2 processes x 4 = 2 steps an epoch, 8 steps; every step checkpointed, so a
# resume can start anywhere; every step-level randomness on (mixup/cutmix, erasing, drop-path, TrivialAugment)
COMMON = ("--batch_size", "4", "--epochs", "4", "--save_every_steps", "1", "--keep_last", "20", "--auto_augment", "ta",
          "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--random_erase", "0.25", "--drop_path", "0.1")
LAST = 8

SRUN = r"""#!/bin/bash
# srun --ntasks-per-node=1 on one machine: the command once per node, in parallel, each with its SLURM_NODEID and
# in a process group of its own; the highest exit status, as srun returns it. With --kill-on-bad-exit=1 a failed task
# has the others' groups killed if they are still running STUB_KILL_WAIT s later, as srun does after its KillWait
# (else a node left waiting on a dead peer's rendezvous holds the test until its timeout). Its own options are
# recorded apart, one call a line. STUB_GPUS_LIST="8 4": node i's SLURM_GPUS_ON_NODE, which slurmstepd sets per node.
read -ra gpus_on_node <<< "${STUB_GPUS_LIST:-}"
options=()
while [[ "$1" == --* ]]; do options+=("$1"); shift; done
printf '%s\n' "${options[*]}" >> "$STUB_LOG/srun_options"
printf '%s\n' "$*" >> "$STUB_LOG/srun"
declare -A running
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_GPUS_ON_NODE=${gpus_on_node[$node]:-${SLURM_GPUS_ON_NODE:-}} SLURM_NODEID=$node SLURM_PROCID=$node \
        SLURM_LOCALID=0 setsid "$@" &
    running[$!]=1
done
groups=("${!running[@]}") status=0 watchdog=
while ((${#running[@]})); do
    code=0; wait -n -p ended "${!running[@]}" || code=$?
    unset "running[$ended]"
    if ((code > status)); then status=$code; fi
    if ((code != 0)) && [ -z "$watchdog" ] && [[ " ${options[*]} " == *" --kill-on-bad-exit=1 "* ]]; then
        (sleep "${STUB_KILL_WAIT:-20}"; for pid in "${groups[@]}"; do kill -KILL -- "-$pid"; done) >/dev/null 2>&1 &
        watchdog=$!
    fi
done
[ -z "$watchdog" ] || kill "$watchdog" 2>/dev/null
exit "$status"
"""
# STUB_HOSTS=N: an allocation of N nodes, its names written through stdio's buffer as scontrol's C printf writes them
SCONTROL = r"""#!/bin/bash
case "$1" in
    show) if [ -n "${STUB_HOSTS:-}" ]; then exec seq -f "node-%06g" 1 "$STUB_HOSTS"; fi
          tr ',' '\n' <<< "$3" ;;               # show hostnames a,b -> one name a line
    requeue) echo "$2" >> "$STUB_LOG/requeue" ;;
    *) exit 1 ;;
esac
"""
# an `accelerate` that records how it was called on each node, whether it ignores SIGUSR1 (bit 10 of SigIgn), and
# exits with FAKE_STATUS (train.py's stop record, which the script reads after it, is written by the test)
FAKE_ACCELERATE = r"""#!/bin/bash
ignored=$(( 0x$(awk '/^SigIgn/ {print $2}' /proc/$$/status) >> 9 & 1 ))
echo "node=$SLURM_NODEID usr1_ignored=$ignored $*" >> "$STUB_LOG/accelerate"
exit "${FAKE_STATUS:-0}"
"""
# a `torchrun` that records its arguments, then runs the real one
RECORDING_TORCHRUN = f"""#!/bin/bash
echo "$*" >> "$STUB_LOG/torchrun"
exec {Path(sys.executable).parent / "torchrun"} "$@"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm(tmp_path):
    """(environment of a 2-node allocation on this machine, folder of the stand-ins' records)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("fake-accelerate", FAKE_ACCELERATE),
                       ("torchrun", RECORDING_TORCHRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "127.0.0.1,127.0.0.1",
           "GPUS_PER_NODE": "1", "ACCELERATE": ACCELERATE, "ACCELERATE_CONFIG": "accelerate_configs/cpu_ddp.yaml",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("SLURM_RESTART_COUNT", None)
    return env, log


def sbatch(env, *args, popen=False, cwd=ROOT):
    """The script as sbatch runs it, in the folder the job was submitted from (`cwd`)."""
    cmd = ["bash", str(SBATCH), *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def write_stop_record(out, monkeypatch, job, restarts=None):
    """train.py's stop record in `out` as a run of SLURM job `job` writes it (restarts: its SLURM_RESTART_COUNT,
    None: unset, as before the first requeue)."""
    with monkeypatch.context() as m:
        m.setenv("SLURM_JOB_ID", job)
        if restarts is None:
            m.delenv("SLURM_RESTART_COUNT", raising=False)
        else:
            m.setenv("SLURM_RESTART_COUNT", str(restarts))
        text = stopping.stop_record("SIGUSR1", 2, out / "checkpoints" / "step_00000002", None)
    atomic_write_text(out / STOPPED_RECORD, text)
    return text


def train_args(dataset, out, *extra):
    """train.py's arguments (what follows the script's path) of the runs here."""
    cmd = train_cmd(dataset, out, *COMMON, *extra)
    return cmd[cmd.index(str(ROOT / "train.py")) + 1:]


def two_process_cmd(dataset, out, *extra):
    return [ACCELERATE, "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml", "--main_process_port",
            str(free_port()), str(ROOT / "train.py"), *train_args(dataset, out, *extra)]


def weights(run_dir, step=LAST):
    return load_file(Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# train.py with each micro-batch's final training input recorded: labels and a digest of the images after
# augmentation, erasing and mixup/cutmix and of the soft targets, one line per micro-batch in {trace}/rank<R>.jsonl
TRACED_TRAIN = """
import hashlib, json, os, runpy, sys
sys.path.insert(0, {root!r})
import imagenet_trainer.data as data
mix = data.mixup_cutmix
trace = open(os.path.join({trace!r}, "rank" + os.environ.get("RANK", "0") + ".jsonl"), "a")
def traced(x, y, *args, **kwargs):
    x, target = mix(x, y, *args, **kwargs)
    digest = hashlib.sha1(x.cpu().contiguous().numpy().tobytes() + target.cpu().numpy().tobytes()).hexdigest()
    trace.write(json.dumps({{"labels": y.tolist(), "digest": digest}}) + "\\n")
    trace.flush()
    return x, target
data.mixup_cutmix = traced
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


def traced_train(folder) -> Path:
    """A train.py that traces into `folder`."""
    folder.mkdir()
    (folder / "train.py").write_text(TRACED_TRAIN.format(root=str(ROOT), train=str(ROOT / "train.py"),
                                                         trace=str(folder)))
    return folder / "train.py"


def trace(folder, rank=0):
    return [json.loads(line) for line in (Path(folder) / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(preprocessed, tmp_path_factory):
    """An uninterrupted 2-process run on one machine, its data stream traced (in ../trace)."""
    base = tmp_path_factory.mktemp("reference")
    out = base / "run"
    cmd = two_process_cmd(preprocessed, out)
    cmd[cmd.index(str(ROOT / "train.py"))] = str(traced_train(base / "trace"))
    ok(run(cmd))
    assert rows(out)[-1]["step"] == LAST
    return out


def test_sbatch_derives_the_topology_from_slurm_and_requeues_on_the_stop_status(slurm, tmp_path, monkeypatch):
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_GPUS_ON_NODE": "4"}
    del env["GPUS_PER_NODE"], env["ACCELERATE_CONFIG"]
    out = tmp_path / "run"
    out.mkdir()
    ok(sbatch(env, "--dataset", "d", "--output_dir", out))
    calls = sorted((log / "accelerate").read_text().splitlines())
    tail = (f"--config_file accelerate_configs/multi_node.yaml --num_machines 2 --num_processes 8 --main_process_ip "
            f"gpu-a --main_process_port 29742 train.py --dataset d --output_dir {out}")
    assert calls == [f"node={n} usr1_ignored=1 launch --machine_rank {n} {tail}" for n in (0, 1)]
    assert not (log / "requeue").exists()

    (log / "accelerate").unlink()  # a requeued job resumes its checkpoint; --output_dir=X is understood too
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    ok(sbatch({**env, "SLURM_RESTART_COUNT": "1"}, f"--output_dir={out}"))
    assert all(c.endswith(f"train.py --output_dir={out} --resume_from_checkpoint latest")
               for c in (log / "accelerate").read_text().splitlines())

    # train.py's status 75 directly, or (through a launcher, which reports 1) its stop record: requeue
    for status, stopped in ((75, False), (1, True)):
        (log / "requeue").unlink(missing_ok=True)
        if stopped:
            write_stop_record(out, monkeypatch, "4242")
        proc = ok(sbatch({**env, "FAKE_STATUS": str(status)}, "--output_dir", out))
        assert (log / "requeue").read_text().split() == ["4242"], proc.stdout
    # any other failure is the job's status; a record that names no job does not requeue it
    (log / "requeue").unlink()
    (out / "stopped_on_signal.json").write_text("{}")
    proc = sbatch({**env, "FAKE_STATUS": "1"}, "--output_dir", out)
    assert proc.returncode == 1 and not (log / "requeue").exists()

    proc = sbatch(env, "--dataset", "d")
    assert proc.returncode == 2 and "--output_dir" in proc.stderr.strip().splitlines()[-1]


def test_sbatch_reads_every_host_name_passes_the_jobs_cpus_and_takes_output_dir_from_the_config(slurm, tmp_path,
                                                                                                monkeypatch):
    """100,000 node names (1.2 MB): a reader that stops after the first name (`| head -n 1`) leaves scontrol to die
    of SIGPIPE, which set -e and pipefail turn into a silent exit 141. srun gets the job's --cpus-per-task (Slurm
    22.05-23.02 srun would otherwise bind each node's training to one CPU). output_dir may come from --config's YAML:
    the stop record is looked for there."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "STUB_HOSTS": "100000", "SLURM_CPUS_PER_TASK": "64",
           "PYTHON": sys.executable}
    out = tmp_path / "run"
    out.mkdir()
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "output_dir": str(out)}))
    write_stop_record(out, monkeypatch, "4242")
    proc = ok(sbatch({**env, "FAKE_STATUS": "1"}, "--config", config))
    assert "rendezvous node-000001:" in proc.stdout
    assert (log / "srun_options").read_text().split() == ["--ntasks-per-node=1", "--kill-on-bad-exit=1",
                                                          "--cpus-per-task=64"]
    assert (log / "requeue").read_text().split() == ["4242"]  # the record in the YAML's output_dir was read
    del env["SLURM_CPUS_PER_TASK"]
    ok(sbatch(env, f"--config={config}"))
    assert (log / "srun_options").read_text().splitlines()[-1] == "--ntasks-per-node=1 --kill-on-bad-exit=1"

    proc = sbatch(env, "--config", tmp_path / "missing.yaml")  # the file named, not the output_dir it would hold
    assert proc.returncode == 2 and "missing.yaml: no such file" in proc.stderr.strip().splitlines()[-1]


def test_sbatch_requeues_on_its_own_runs_stop_record_only(slurm, tmp_path, monkeypatch):
    """A second job (5151) submitted on job 4242's --output_dir by mistake, its train.py refused (status 1), while 4242
    stops: 4242's record requeues neither 5151 (whose requeue would resume 4242's run with 5151's flags) nor is
    deleted by 5151's start, so 4242's script, reading it after its launchers' status 1, still requeues 4242. A
    record an earlier run of the job left (restart 0, then restart 1 failed for another reason) requeues nothing."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "FAKE_STATUS": "1"}
    out = tmp_path / "run"
    out.mkdir()
    record = write_stop_record(out, monkeypatch, "4242")
    for other in ("5151", "424", "42420"):  # another job; ids that share digits with 4242
        proc = sbatch({**env, "SLURM_JOB_ID": other}, "--output_dir", out)
        assert proc.returncode == 1 and not (log / "requeue").exists(), proc.stdout
        assert (out / STOPPED_RECORD).read_text() == record
    proc = ok(sbatch(env, "--output_dir", out))
    assert (log / "requeue").read_text().split() == ["4242"], proc.stdout

    (log / "requeue").unlink()
    for restarts in ("1", "10"):  # later runs of the same job, which failed for another reason
        proc = sbatch({**env, "SLURM_RESTART_COUNT": restarts}, "--output_dir", out)
        assert proc.returncode == 1 and not (log / "requeue").exists(), proc.stdout
    write_stop_record(out, monkeypatch, "4242", restarts=1)  # restart 1's own stop
    proc = ok(sbatch({**env, "SLURM_RESTART_COUNT": "1"}, "--output_dir", out))
    assert (log / "requeue").read_text().split() == ["4242"], proc.stdout


# an `accelerate` standing in for a launcher whose ranks checkpoint on SLURM's SIGTERM: its node's stop record
# (FAKE_RECORD, copied to FAKE_OUT) appears FAKE_SLEEP s in, then the launcher reports 1, as accelerate launch does
STOPPING_ACCELERATE = r"""#!/bin/bash
echo "node=$SLURM_NODEID" >> "$STUB_LOG/accelerate"
sleep "$FAKE_SLEEP"
cp "$FAKE_RECORD" "$FAKE_OUT/stopped_on_signal.json.$SLURM_NODEID" && mv "$FAKE_OUT/stopped_on_signal.json.$SLURM_NODEID" \
    "$FAKE_OUT/stopped_on_signal.json"
exit 1
"""


def test_sbatch_outlives_slurms_sigterm_and_requeues_on_its_runs_stop_record(slurm, tmp_path, monkeypatch):
    """Preemption with GraceTime, scancel and the hard limit send SIGTERM to the batch shell too: it died at once
    (143), before the requeue its run's stop record asks for, while train.py still checkpointed. It now waits for
    srun and requeues."""
    env, log = slurm
    out = tmp_path / "run"
    out.mkdir()
    record = tmp_path / "record.json"
    record.write_text(write_stop_record(out, monkeypatch, "4242"))
    (out / STOPPED_RECORD).unlink()
    fake = tmp_path / "bin" / "stopping-accelerate"
    fake.write_text(STOPPING_ACCELERATE)
    fake.chmod(0o755)
    env = {**env, "ACCELERATE": "stopping-accelerate", "FAKE_SLEEP": "3", "FAKE_RECORD": str(record),
           "FAKE_OUT": str(out)}
    proc = sbatch(env, "--output_dir", out, popen=True)
    deadline = time.monotonic() + 60
    while not (log / "accelerate").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    said = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and (log / "requeue").read_text().split() == ["4242"], said


def test_readme_torchrun_route_rendezvouses_at_the_head_node_in_the_configs_precision(slurm, preprocessed, tmp_path):
    """The README's torchrun lines as written (8 GPUs -> 1 process a node, the port a free one), on 2 stand-in
    nodes: $HEAD reaches each node's single-quoted command, and the exported ACCELERATE_MIXED_PRECISION gives the
    ranks multi_node.yaml's bf16, which torchrun alone (no accelerate config) would leave at "no"."""
    env, log = slurm
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    lines = []
    for start in ("export ACCELERATE_MIXED_PRECISION=", "export HEAD=", "srun --ntasks-per-node=1 bash -c 'trap"):
        found = [span for span in inline_spans() if span.startswith(start)]
        assert len(found) == 1, f"README: one inline `{start}...` expected in the torchrun bullet, found {found}"
        lines += found
    out, port = tmp_path / "torchrun", free_port()
    args = " ".join(train_args(preprocessed, out, "--max_train_steps", "2"))
    assert "'" not in args and lines[2].count("--nproc_per_node 8") == lines[2].count(":29500") == 1
    lines[2] = (lines[2].replace("--nproc_per_node 8", "--nproc_per_node 1").replace(":29500", f":{port}")
                .replace("train.py ...'", f"train.py {args}'"))
    ok(subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=ROOT, env=env, capture_output=True, text=True,
                      timeout=600))
    calls = (log / "torchrun").read_text().splitlines()
    assert len(calls) == 2 and all(f"--rdzv_endpoint 127.0.0.1:{port} " in c for c in calls), calls
    info = json.loads((out / "run_info.json").read_text())
    assert (info["mixed_precision"], info["num_processes"]) == ("bf16", 2)


def test_a_requeue_before_the_runs_first_checkpoint_keeps_the_checkpoint_it_started_from(slurm, tmp_path):
    """README's Resume: a run may start from another run's checkpoint in a new --output_dir. Requeued before its own
    first checkpoint (a node failure), it must start from that checkpoint again: train.py takes the last of a repeated
    flag, and an appended `--resume_from_checkpoint latest` finds nothing in the new folder and starts from scratch.
    Once the run has a checkpoint of its own (not a copy a user made, step_N.bak), the requeue resumes it."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "SLURM_RESTART_COUNT": "1", "PYTHON": sys.executable}
    other, out = tmp_path / "other" / "checkpoints" / "step_00000040", tmp_path / "run"
    submitted = f"train.py --resume_from_checkpoint {other} --output_dir {out}"
    for own in (None, "step_00000040.bak", "step_00000002"):
        if own:
            (out / "checkpoints" / own).mkdir(parents=True)
        (log / "accelerate").unlink(missing_ok=True)
        ok(sbatch(env, "--resume_from_checkpoint", other, "--output_dir", out))
        calls = (log / "accelerate").read_text().splitlines()
        tail = submitted + (" --resume_from_checkpoint latest" if own == "step_00000002" else "")
        assert len(calls) == 2 and all(c.endswith(tail) for c in calls), (own, calls)

    # submitted without --resume_from_checkpoint: any requeue continues the run its folder holds (a first checkpoint
    # cut short leaves .tmp_step_N and metrics.jsonl, which train.py continues only with the flag)
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints" / ".tmp_step_00000500").mkdir(parents=True)
    (log / "accelerate").unlink()
    ok(sbatch(env, "--output_dir", fresh))
    assert all(c.endswith(f"--output_dir {fresh} --resume_from_checkpoint latest")
               for c in (log / "accelerate").read_text().splitlines())
    (log / "accelerate").unlink()  # an empty one given (to override a YAML's) is none
    ok(sbatch(env, "--output_dir", fresh, "--resume_from_checkpoint="))
    assert all(c.endswith("--resume_from_checkpoint= --resume_from_checkpoint latest")
               for c in (log / "accelerate").read_text().splitlines())

    recipe = tmp_path / "from_other.yaml"  # the checkpoint to start from, named in the --config YAML
    recipe.write_text(yaml.safe_dump({"output_dir": str(fresh), "resume_from_checkpoint": str(other)}))
    (log / "accelerate").unlink()
    ok(sbatch(env, "--config", recipe))
    assert all(c.endswith(f"--config {recipe}") for c in (log / "accelerate").read_text().splitlines())
    # a $PYTHON without PyYAML cannot tell: the job ends in one line, not in a `latest` that starts from scratch
    (tmp_path / "noyaml").mkdir()
    (tmp_path / "noyaml" / "yaml.py").write_text("raise ImportError('No module named yaml')\n")
    (log / "accelerate").unlink()
    proc = sbatch({**env, "PYTHONPATH": str(tmp_path / "noyaml")}, "--config", recipe, "--output_dir", fresh)
    assert proc.returncode == 2 and not (log / "accelerate").exists()
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot read resume_from_checkpoint from --config {recipe} with $PYTHON"), proc.stderr
    # a system python3 too old for the project (3.6 on CentOS 7): its `python -c CODE ARGS...` as 3.6 runs it
    old = tmp_path / "python3.6"
    old.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -c "import sys; sys.version_info = (3, 6, 15, '
                   f"'final', 0); exec(sys.argv.pop(1))\" \"${{@:2}}\"\n")
    old.chmod(0o755)
    proc = sbatch({**env, "PYTHON": str(old)}, "--config", recipe, "--output_dir", fresh)
    assert proc.returncode == 2 and not (log / "accelerate").exists() and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "it is Python 3.6, this project needs 3.11 or newer; activate its venv before sbatch or set PYTHON to its "
        "interpreter"), proc.stderr
    proc = sbatch(env, "--config", tmp_path / "nope.yaml", "--output_dir", fresh)  # a typo: not PyYAML's fault
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"error: --config {tmp_path / 'nope.yaml'}: no such file"), proc.stderr

    config = tmp_path / "recipe.yaml"  # the run's checkpoints are looked for in the YAML's output_dir too
    config.write_text(yaml.safe_dump({"output_dir": str(out)}))
    ok(sbatch(env, "--config", config, "--resume_from_checkpoint", other))
    assert all(c.endswith(f"--resume_from_checkpoint {other} --resume_from_checkpoint latest")
               for c in (log / "accelerate").read_text().splitlines())


def test_the_script_reads_the_yaml_output_dir_as_train_py_does(slurm, tmp_path):
    """`output_dir: 2024_06_01` is the folder 2024_06_01 to train.py (a text field as written), the number 20240601 to
    yaml.safe_load: read so, a requeue would look for the run's checkpoints in ./20240601 and start again from the
    YAML's resume_from_checkpoint (another run's), losing the run's own progress. The job runs in a checkout of its
    own here (the relative folder is the checkout's)."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "SLURM_RESTART_COUNT": "1", "PYTHON": sys.executable}
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("imagenet_trainer", "accelerate_configs", "train.py"):
        (checkout / name).symlink_to(ROOT / name)
    (checkout / "2024_06_01" / "checkpoints" / "step_00000002").mkdir(parents=True)
    other = tmp_path / "other" / "checkpoints" / "step_00000040"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: 2024_06_01\nresume_from_checkpoint: {other}\n")
    ok(sbatch(env, "--config", recipe, cwd=checkout))
    calls = (log / "accelerate").read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith(f"--config {recipe} --resume_from_checkpoint latest") for c in calls), \
        calls
    recipe.write_text("output_dir: a\noutput_dir: b\n")  # what train.py refuses ends the job in its own line
    proc = sbatch(env, "--config", recipe, cwd=checkout)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --config {recipe}: key 'output_dir' is given twice (lines 1 and 2); keep one"], proc.stderr
    elsewhere = tmp_path / "elsewhere"  # submitted from another folder: that is what to fix, not PyYAML
    elsewhere.mkdir()
    (log / "accelerate").unlink()
    proc = sbatch(env, "--config", recipe, cwd=elsewhere)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: cannot read output_dir from --config {recipe}: the job runs in {elsewhere}, not the repository root; "
        "submit from the repository root"], proc.stderr
    assert not (log / "accelerate").exists()


def test_jobs_1000_ids_apart_on_one_head_node_rendezvous_on_different_ports(slurm, tmp_path):
    """29500 + job id mod 1000 is 29742 for jobs 4242 and 5242: with both head nodes on one host, the second job's
    rank 0 would fail with accelerate's "port in use". The script, which runs on the head node, takes the first port
    from there that is free; MAIN_PROCESS_PORT is taken as given."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate"}

    def rendezvous_port(job, **extra):
        (log / "accelerate").unlink(missing_ok=True)
        proc = ok(sbatch({**env, "SLURM_JOB_ID": job, **extra}, "--output_dir", tmp_path / job))
        port = int(re.search(r"rendezvous 127\.0\.0\.1:(\d+)", proc.stdout)[1])
        calls = (log / "accelerate").read_text().splitlines()
        assert len(calls) == 2 and all(f"--main_process_port {port} " in c for c in calls), calls
        return port

    first = rendezvous_port("4242")
    with socket.socket() as rank0:  # job 4242's rank 0, listening there
        rank0.bind(("", first))
        rank0.listen()
        assert rendezvous_port("5242") != first
        assert rendezvous_port("5242", MAIN_PROCESS_PORT=str(first)) == first


def test_nodes_with_different_gpu_counts_are_refused_in_one_line(slurm, tmp_path):
    """sbatch --nodes 2 --gpus 12 may give 8 + 4 GPUs, and every node starts as many processes as the batch node has
    GPUs: the 4-GPU node would start 8. Its task stops before its launcher, naming both counts and the flag to use."""
    env, log = slurm
    env = {**env, "ACCELERATE": "fake-accelerate", "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_GPUS_ON_NODE": "8",
           "STUB_GPUS_LIST": "8 4"}
    del env["GPUS_PER_NODE"]
    proc = sbatch(env, "--output_dir", tmp_path / "run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: node 1 has 4 GPUs, fewer than the 8 processes every node starts (GPUS_PER_NODE, else the GPU count "
        "of the first node): submit with --gpus-per-node G (not --gpus) so that every node gets G")
    assert [c.split()[0] for c in (log / "accelerate").read_text().splitlines()] == ["node=0"]
    for extra in ({"STUB_GPUS_LIST": "8 8"}, {"GPUS_PER_NODE": "4"}):  # GPUS_PER_NODE=4 fits both nodes
        (log / "accelerate").unlink()
        ok(sbatch({**env, **extra}, "--output_dir", tmp_path / "run"))
        assert len((log / "accelerate").read_text().splitlines()) == 2, extra
    proc = sbatch({**env, "SLURM_GPUS_ON_NODE": "", "GPUS_PER_NODE": "8"}, "--output_dir", tmp_path / "run")
    assert proc.returncode == 2 and "node 1 has 4 GPUs, fewer than the 8 processes" in proc.stderr


# a train.py rank: "ready" into the file argv[1] names once it takes SIGUSR1, "usr1" and train.py's stop status on it
RANK = """import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
def stop(*_):
    marker.write_text("usr1")
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
marker.write_text("ready")
time.sleep(30)
"""


def command_lines():
    """(pid, argv) of this machine's processes."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            yield int(proc.name), (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue


def test_the_node_tasks_pass_the_signal_on_without_ps(slurm, tmp_path):
    """Many containers lack procps: each node task finds its train.py processes without `ps` (none on PATH here), and
    the signal SLURM sends the task alone (proctrack/pgid, as in test_faults) still stops them; the job requeues."""
    env, log = slurm
    tools = tmp_path / "tools"  # what the script, its node tasks and the stand-ins run, ps left out
    tools.mkdir()
    for name in ("bash", "cat", "tr", "grep", "setsid", "sleep"):
        (tools / name).symlink_to(shutil.which(name))
    (tmp_path / "train.py").write_text(RANK)
    launcher = tmp_path / "bin" / "rank-launcher"  # `accelerate launch ...` of one rank a node
    launcher.write_text(f'#!/bin/bash\n"{sys.executable}" "{tmp_path / "train.py"}" "$STUB_LOG/rank$SLURM_NODEID"\n')
    launcher.chmod(0o755)
    env = {**env, "PATH": f"{tmp_path / 'bin'}:{tools}", "ACCELERATE": "rank-launcher", "PYTHON": sys.executable}
    assert shutil.which("ps", path=env["PATH"]) is None
    out = tmp_path / "run"
    job = sbatch(env, "--output_dir", out, popen=True)
    markers = [log / f"rank{node}" for node in (0, 1)]
    deadline = time.time() + 60
    while not all(m.exists() for m in markers) and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    tasks = [pid for pid, argv in command_lines() if argv[:2] == [b"bash", b"-c"] and str(out).encode() in argv]
    assert len(tasks) == 2, tasks
    for pid in tasks:
        os.kill(pid, signal.SIGUSR1)
    output = job.communicate(timeout=120)[0]
    assert [m.read_text() for m in markers] == ["usr1", "usr1"], output
    assert job.returncode == 0 and (log / "requeue").read_text().split() == ["4242"], output


def test_sbatch_expands_no_bare_array_under_set_u():
    """bash before 4.4 (RHEL/CentOS 7: 4.2) calls an empty array unbound under set -u, so a first launch (no
    --resume_from_checkpoint) would fail before srun: every array is expanded as ${a[@]+"${a[@]}"}. A check of the
    text: the bash here (5.x) runs both forms alike."""
    assert re.findall(r'(?<!\+)"\$\{\w+\[[@*]\]\}"', SBATCH.read_text()) == []


def test_two_machines_on_loopback_train_as_one_machine_of_two_processes(slurm, reference, preprocessed, tmp_path):
    """Two `accelerate launch --num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1` (one process each,
    gloo), started by slurm/train.sbatch: the same weights as one machine's 2 processes, bit for bit."""
    env, log = slurm
    out = tmp_path / "two_nodes"
    proc = ok(sbatch({**env, "MAIN_PROCESS_PORT": str(free_port())}, *train_args(preprocessed, out)))
    srun = (log / "srun").read_text()  # one call; the per-node task it runs spans lines
    assert srun.count(" train.py ") == 1 and "--num_machines 2 --num_processes 2 --main_process_ip 127.0.0.1" in srun
    assert "rendezvous 127.0.0.1" in proc.stdout
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    assert len(rows(out)) == len(rows(reference))  # one main process wrote the metrics
    assert_bitwise_equal(weights(reference), weights(out))


def worker_pids(out) -> dict:
    """{"launchers": [pid, ...], rank: pid} of the processes running train.py into `out`."""
    found = {"launchers": []}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if str(out).encode() not in argv or len(argv) < 2:
                continue
            if argv[1].endswith(b"accelerate"):
                found["launchers"].append(int(proc.name))
            elif any(a.endswith(b"train.py") for a in argv[1:3]):  # python [-u] train.py
                env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
                found[int(env[b"RANK"])] = int(proc.name)
        except (OSError, ValueError, KeyError):  # gone meanwhile, or not ours
            continue
    return found


def test_pre_timeout_signal_checkpoints_requeues_and_the_requeued_job_resumes_exactly(slurm, reference, preprocessed,
                                                                                      tmp_path):
    """SIGUSR1 to ONE rank (and to both launchers, which must ignore it), as SLURM's --signal sends it: both ranks
    checkpoint at the same step and exit 75, the script requeues; the requeued job ends bit-equal to the reference."""
    env, log = slurm
    out = tmp_path / "run"
    args = train_args(preprocessed, out)
    job = sbatch({**env, "MAIN_PROCESS_PORT": str(free_port())}, *args, popen=True)
    first = out / "checkpoints" / "step_00000002"
    deadline = time.time() + 300
    while not first.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    pids = worker_pids(out)
    assert 1 in pids and len(pids["launchers"]) == 2, pids
    for pid in (*pids["launchers"], pids[1]):
        os.kill(pid, signal.SIGUSR1)
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output[-5000:]
    assert (log / "requeue").read_text().split() == ["4242"], output[-3000:]
    record = json.loads((out / "stopped_on_signal.json").read_text())
    assert record["exit_status"] == 75 and record["signal"] == "SIGUSR1"
    assert (record["slurm_job_id"], record["slurm_restart_count"]) == ("4242", 0)  # which run of which job stopped
    assert record["seconds_after_signal"] is None  # the record is rank 0's, and the signal reached rank 1 alone
    stopped_at = record["step"]
    assert 2 <= stopped_at < LAST, "stopped too late to test anything"
    assert record["checkpoint"] == str(out / "checkpoints" / f"step_{stopped_at:08d}")
    assert max(p.name for p in (out / "checkpoints").glob("step_*")) == f"step_{stopped_at:08d}"
    assert output.count("exitcode  : 75") == 2, output[-3000:]  # both ranks, in torch elastic's report

    requeued = sbatch({**env, "SLURM_RESTART_COUNT": "1", "MAIN_PROCESS_PORT": str(free_port())}, *args)
    ok(requeued)
    assert f"resumed from {out / 'checkpoints' / f'step_{stopped_at:08d}'}" in requeued.stdout
    assert (log / "srun").read_text().splitlines()[-1].endswith("--resume_from_checkpoint latest")
    assert (log / "requeue").read_text().split() == ["4242"] and not (out / "stopped_on_signal.json").exists()
    assert_bitwise_equal(weights(reference), weights(out))
    assert [r["step"] for r in rows(out)] == [r["step"] for r in rows(reference)]


BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def test_two_process_checkpoint_resumes_on_one_process_with_the_same_global_batches(reference, preprocessed, tmp_path):
    """Elastic resume: step 3 of the 2-process reference (mid-epoch) continued by 1 process x --grad_accum_steps 2.

    The data stream is asserted exactly: every micro-batch's labels and final input (crop, flip, TrivialAugment,
    erasing, mixup/cutmix, targets) equal the reference's micro-batch at the same place. The weights are equal up to
    float reduction order (DDP averages the ranks' gradients, accumulation sums their shares): rtol 1e-4, atol 1e-6
    after 5 steps (with 2 processes they come out bit-equal, as halving is exact; 4 -> 2 x 2 sums in another order).
    BatchNorm running statistics are not compared: each rank keeps its own (DDP broadcasts rank 0's), so the
    reference's saved ones come from rank 0's micro-batches only, the 1-process run's from both."""
    resume_at, out = 3, tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "run_info.json"):
        shutil.copy(reference / name, out / name)
    shutil.copytree(reference / "checkpoints" / f"step_{resume_at:08d}", out / "checkpoints" / f"step_{resume_at:08d}")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(reference) if r["step"] <= resume_at))
    script = traced_train(tmp_path / "trace")
    cmd = train_cmd(preprocessed, out, *COMMON, "--grad_accum_steps", "2", "--resume_from_checkpoint", "latest")
    cmd[cmd.index(str(ROOT / "train.py"))] = str(script)
    proc = ok(run(cmd))
    said = proc.stdout + proc.stderr
    assert f"at epoch 1, step {resume_at}" in said
    # one line for the process count and the accumulation that keeps the global batch; the card lists them together
    # (its table has the last launch's 1 process x grad_accum_steps 2, which the first steps did not train with)
    assert said.count("saved on 2 processes, resumed on 1 with --grad_accum_steps 2") == 1, said[-3000:]
    assert "num_processes 2 -> 1" not in said, said[-3000:]
    card = (out / "final" / "README.md").read_text()
    assert (f"Resumed with other flags (the table gives the last launch's): at step {resume_at}, `num_processes 2 -> "
            "1 (grad_accum_steps 1 -> 2, the same global batch)`.") in card, card

    # rank r's i-th micro-batch is the run's micro-batch 2 i + r; the resumed process's i-th is 2 * resume_at + i
    ranks = [trace(reference.parent / "trace", r) for r in (0, 1)]
    stream = [batch for pair in zip(*ranks) for batch in pair]
    resumed = trace(tmp_path / "trace")
    assert len(stream) == 2 * LAST and len(resumed) == 2 * (LAST - resume_at)
    assert resumed == stream[2 * resume_at:]

    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys()
    compared = [k for k in a if not k.endswith(BATCHNORM_STATS)]
    for k in compared:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    # the resumed epoch's train_loss covers the whole epoch, counted in the new layout's micro-batches
    assert [r["train_loss"] for r in rows(out)] == pytest.approx([r["train_loss"] for r in rows(reference)], rel=1e-4)


def test_output_dir_takes_a_new_or_empty_folder_and_a_failed_start_blocks_nothing(preprocessed, tmp_path):
    """Requeued jobs and reruns repeat their command: what a failed start leaves must not block it; and a run never
    writes into a folder of the user's."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x\n")
    proc = run(train_cmd(preprocessed, mine))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --output_dir {mine} is not empty and holds no train.py "
                                                    "run (notes.txt); give a new or empty folder (train.py writes only "
                                                    "into its own)")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "x\n"

    fresh = tmp_path / "fresh"
    for _ in range(2):  # the same failing command twice: the same error, nothing written
        proc = run(train_cmd(preprocessed, fresh, "--model", "no_such_model"))
        assert proc.returncode != 0 and "--model no_such_model" in proc.stderr.strip().splitlines()[-1]
        assert not fresh.exists()

    # what an earlier start writes before its first checkpoint (a crash, a pre-emption): the same command starts over
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("config.yaml", "run_info.json", ".run_info.json.x1.tmp"):
        (earlier / name).write_text("{}\n")
    proc = run(train_cmd(preprocessed, earlier, "--model", "no_such_model"))
    assert proc.returncode != 0 and "--model no_such_model" in proc.stderr.strip().splitlines()[-1]


def test_accelerate_launch_quiet_leaves_the_one_error_line(preprocessed, tmp_path):
    """What the README's troubleshooting says: one process under `accelerate launch -q` ends with train.py's line,
    without the launcher's CalledProcessError traceback."""
    proc = run([ACCELERATE, "launch", "-q", "--config_file", "accelerate_configs/cpu.yaml", str(ROOT / "train.py"),
                "--dataset", str(preprocessed), "--output_dir", str(tmp_path / "r"), "--epochs", "two"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: --epochs must be an int, got 'two'"
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr


def test_one_process_stops_on_the_signal_at_the_next_step(preprocessed, tmp_path):
    """One process asks no other rank: the signal alone stops it at the next step boundary, checkpointed, status 75."""
    out = tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SLURM_JOB_ID": "777",
           "SLURM_RESTART_COUNT": "3"}
    proc = subprocess.Popen(train_cmd(preprocessed, out, *COMMON), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = out / "checkpoints" / "step_00000002"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=300)
    assert proc.returncode == 75
    record = json.loads((out / "stopped_on_signal.json").read_text())
    assert 2 <= record["step"] < LAST, "stopped too late to test anything"
    assert 0 < record["seconds_after_signal"] < 60  # one step and one checkpoint
    assert (record["slurm_job_id"], record["slurm_restart_count"]) == ("777", 3)  # what slurm/train.sbatch compares
    assert max(p.name for p in (out / "checkpoints").glob("step_*")) == f"step_{record['step']:08d}"
