"""Imported by the DataLoader workers' fork server only (worker_processes.WORKER_PRELOAD, last): the server ends without
the interpreter's teardown of what it preloaded, and every process it forks ends once the training process is gone.

The server leaves once the training process has gone, and `accelerate launch` (1.16) waits for it: the launcher reads
the child's stderr to its end, and the server and its workers hold a copy of that stderr. The server's teardown (torch,
timm, accelerate and datasets' modules garbage-collected) would add its seconds to the end of every launch that has
workers (BENCHMARKS.md, "GPU check"). Nothing in the server needs it: the workers it forked end on their own
(os._exit), and its only resources are the training process's, released there.

A training process that dies without shutting its workers down (SIGKILL, the out-of-memory killer, a scheduler's hard
kill) would leave them running for good: each holds the write end of the server's "alive" pipe, so the server never
sees the end of it and stays, and torch's own check in the worker loop watches its parent, which is that server, not
the training process; the stop signals are blocked in them (worker_processes). They would keep their memory, the
batches' shared memory, and the job's stdout and stderr, which a `| tee` or a scheduler reads to their end. So each
process the server forks watches the training process itself and ends at once when it is gone; the server follows,
its pipe closed by the last of them.
"""
import atexit
import os
import select
import threading
import time

from .process_exit import end_process

# registered after multiprocessing's own handler, so it runs first (atexit runs last-in first)
atexit.register(end_process, 0)

POLL_S = 0.5  # where the kernel cannot say when a process ends (no pidfd): how often a worker looks for it

# the server is started by the training process (fork and exec), which is its parent while it imports this
CLIENT = os.getppid()
try:
    # a pidfd, not the pid: it turns readable the moment the process dies, before anyone reaps it, and cannot name
    # another process that reuses the pid; the server holds it and each fork inherits it
    CLIENT_FD = os.pidfd_open(CLIENT)
except (AttributeError, OSError):  # not Linux 5.3+, or the client already gone (then the server forks no worker)
    CLIENT_FD = None


def _end_with_client() -> None:
    if CLIENT_FD is not None:
        poller = select.poll()
        poller.register(CLIENT_FD, select.POLLIN)
        poller.poll()  # asleep until then: no timeout, no wakeup (a signal's EINTR is retried)
    else:
        while True:
            time.sleep(POLL_S)
            try:
                os.kill(CLIENT, 0)
            except (ProcessLookupError, PermissionError):  # gone, or its pid is another user's process now
                break
    # at once, from this thread: the main thread may be blocked anywhere (a full queue, a semaphore), nothing in a
    # worker is left to save with no process to send it to, and an exit through the interpreter could hang or print
    os._exit(1)


def _watch_client() -> None:
    """In each process the server forks (a DataLoader worker): a daemon thread, asleep until the client is gone."""
    threading.Thread(target=_end_with_client, name="end-with-training-process", daemon=True).start()


# in the forked children only: the server itself keeps its one thread, the reason workers are forked from it
os.register_at_fork(after_in_child=_watch_client)
