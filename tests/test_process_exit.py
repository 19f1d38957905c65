"""imagenet_trainer/process_exit.py: train.py and validate.py end without the interpreter's teardown, and lose nothing
by it: the exit status, what they printed, the atexit handlers' work, and no process of theirs left behind."""
import os
import signal
import subprocess
import sys
import threading
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
    """The command lines of the processes still in session `sid` (zombies aside: they hold no memory and no file, and
    whether pid 1 reaps them soon is the container's business)."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session
            if int(fields[3]) == sid and fields[0] != "Z":
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


def test_a_sigkilled_train_leaves_no_process_behind(preprocessed, tmp_path):
    # SIGKILL (the out-of-memory killer, kill -9, a scheduler's hard kill) gives train.py no chance to shut its workers
    # down: they end on their own, then the fork server and the resource tracker, and the job's output reaches its
    # end, which a `| tee` or a scheduler waits for; before, the workers and the server ran on for good
    out = tmp_path / "run"
    command = train_cmd(preprocessed, out, "--epochs", "1000", "--num_workers", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its session id and process group: its pid
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # to the pipe's end
    reader.start()
    try:
        deadline = time.monotonic() + 300
        # an epoch's row: the persistent train workers run, the evaluation's have run too
        while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "".join(output)[-3000:]
        assert len(session_processes(proc.pid)) >= 5, session_processes(proc.pid)  # + tracker, server, 2 workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == []
        reader.join(timeout=5)
        assert not reader.is_alive(), "the job's output is still held open"
        assert "Traceback" not in "".join(output), "".join(output)[-3000:]
    finally:
        try:  # what a failed run left: the workers keep the process group, blocked signals aside
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


SERVER_SCRIPT = """
import multiprocessing, sys
sys.path[:0] = [{root!r}, {folder!r}]
if __name__ == "__main__":  # a worker runs this script again, as "__mp_main__"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload({preload!r})
    worker = context.Process(target=print, args=("a worker forked from the server",))
    worker.start()
    worker.join()
    print("exitcode", worker.exitcode)
"""

TEARDOWN_MODULE = """
class Teardown:  # its __del__ runs when the interpreter's teardown clears this module
    def __del__(self, open=open):
        open({marker!r}, "w").close()

kept = Teardown()
"""


def test_the_fork_server_ends_without_its_teardown(tmp_path):
    # worker_processes.WORKER_PRELOAD ends with imagenet_trainer.fork_server: the server skips the teardown of what it
    # preloaded (accelerate launch waits for it: the server holds the launch's stderr); without it, the teardown runs
    from imagenet_trainer.worker_processes import WORKER_PRELOAD

    assert WORKER_PRELOAD[-1] == "imagenet_trainer.fork_server"
    for quick in (True, False):
        marker = tmp_path / f"teardown_{quick}"
        (tmp_path / f"preloaded_{quick}.py").write_text(TEARDOWN_MODULE.format(marker=str(marker)))
        preload = [f"preloaded_{quick}", *(["imagenet_trainer.fork_server"] if quick else [])]
        script = tmp_path / "server.py"
        script.write_text(SERVER_SCRIPT.format(root=str(ROOT), folder=str(tmp_path), preload=preload))
        # the server (Python 3.11) imports with the sys.path of `python -c` in the launch's folder: the preloaded
        # module from there, the project through PYTHONPATH
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        stdout, stderr = proc.communicate(timeout=120)  # to the pipes' end: the server holds them until it is gone
        assert proc.returncode == 0, stderr
        assert stdout.splitlines() == ["a worker forked from the server", "exitcode 0"]
        deadline = time.monotonic() + 30
        while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == []
        assert marker.exists() is not quick, quick  # the teardown ran only without the quick end


PRELOAD_SCRIPT = """
import sys
sys.path.insert(0, {root!r})  # the project for this process only: not on PYTHONPATH, the server does not inherit it
from imagenet_trainer.worker_processes import WORKER_PRELOAD, worker_context


def preloaded(queue):  # in a worker forked from the server: the modules it holds are the server's
    queue.put(sorted(name for name in WORKER_PRELOAD if name in sys.modules))


if __name__ == "__main__":
    context = worker_context()
    queue = context.Queue()
    worker = context.Process(target=preloaded, args=(queue,))
    worker.start()
    print(queue.get(timeout=60))
    worker.join()
"""


def test_the_fork_server_preloads_the_project_from_any_folder(tmp_path):
    # launched from a folder other than the project's (a cluster job's, a notebook's): the server still preloads
    # the pipeline and the project's models, and its quick end
    from imagenet_trainer.worker_processes import WORKER_PRELOAD

    script = tmp_path / "preload.py"
    script.write_text(PRELOAD_SCRIPT.format(root=str(ROOT)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sorted(WORKER_PRELOAD))
