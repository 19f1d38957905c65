"""imagenet_trainer/process_exit.py: train.py and validate.py end without the interpreter's teardown, and lose nothing
by it: the exit status, what they printed, the atexit handlers' work, and no process of theirs left behind."""
import os
import subprocess
import sys
import time
from pathlib import Path

from test_train import ROOT, train_cmd

SCRIPT = """
import atexit, sys, threading, time
sys.path.insert(0, {root!r})
from imagenet_trainer.process_exit import exit_now

class Teardown:  # the interpreter's teardown clears __main__'s globals: this one's __del__ then runs
    def __del__(self, open=open):  # builtins are gone by the time it runs
        open({folder!r} + "/teardown", "w").close()

kept = Teardown()
atexit.register(lambda: open({folder!r} + "/atexit", "w").close())
if {thread!r}:
    def upload():
        time.sleep(0.5)
        open({folder!r} + "/thread", "w").close()
    threading.Thread(target=upload).start()
print("the last line, still in stdout's buffer")  # a pipe: block-buffered, not flushed yet
exit_now(3)
print("never printed")
"""


def end(tmp_path, thread=False) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(root=str(ROOT), folder=str(tmp_path), thread=thread))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def test_exit_now_keeps_status_output_and_atexit_and_skips_the_teardown(tmp_path):
    proc = end(tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "the last line, still in stdout's buffer\n"
    assert (tmp_path / "atexit").exists()
    assert not (tmp_path / "teardown").exists()  # the teardown was skipped


def test_exit_now_waits_for_a_thread_that_is_not_a_daemon(tmp_path):
    proc = end(tmp_path, thread=True)
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "thread").exists()  # the usual exit, which joined the thread
    assert (tmp_path / "atexit").exists() and (tmp_path / "teardown").exists()


def session_processes(sid: int) -> list[str]:
    """The command lines of the processes still in session `sid`."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session
            if int(fields[3]) == sid:
                left.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):  # gone meanwhile
            pass
    return left


def test_train_and_validate_leave_no_process_behind(preprocessed, tmp_path):
    # DataLoader workers, their fork server and multiprocessing's resource tracker: none outlives a launch ended by
    # exit_now (the atexit handlers shut the workers down; the server and the tracker leave once the process is gone)
    out = tmp_path / "run"
    train = train_cmd(preprocessed, out, "--epochs", "1", "--num_workers", "2",
                      launcher=("--cpu", "--num_processes", "1"))
    validate = [sys.executable, str(ROOT / "validate.py"), "--model", str(out / "final"), "--dataset",
                str(preprocessed), "--num_workers", "2", "--output", str(tmp_path / "val.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for command in (train, validate):
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # its session id: its pid
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        deadline = time.monotonic() + 30  # the server and the tracker notice the process's end on their own
        while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"{command[:3]}: {left}"
    assert (out / "final" / "model.safetensors").is_file()
    assert "top1" in (tmp_path / "val.json").read_text()
