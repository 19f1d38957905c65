"""How train.py and validate.py end once their work is done and written: without the interpreter's teardown.

That teardown garbage-collects every module torch, dynamo, timm, datasets and transformers loaded: seconds of a
launch's wall time spent after the last file is written, in each process of a launch (BENCHMARKS.md, "GPU check";
benchmarks/gpu_check.sh counts it in a stage's `other` seconds). What has to run still does: the atexit handlers
(multiprocessing's children, Inductor's compile workers, logging's flush) and stdio's flush. Imports nothing heavy.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(status: int = 0) -> None:
    """End the process with `status`, skipping the interpreter's teardown of its modules. Where a thread that is not a
    daemon still runs (an upload a library left going), the process ends the usual way instead, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()  # in the order Python runs them at exit, last registered first
    end_process(status)


def end_process(status: int) -> None:
    """Flush stdio and end the process at once: no atexit handler and no teardown runs after this."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader that went away: nothing left to say there
            pass
    os._exit(status)
