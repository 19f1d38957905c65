"""Imported by the DataLoader workers' fork server only (worker_processes.WORKER_PRELOAD, last): the server ends without
the interpreter's teardown of what it preloaded.

The server leaves once the training process has gone, and `accelerate launch` (1.16) waits for it: the launcher reads
the child's stderr to its end, and the server and its workers hold a copy of that stderr. The server's teardown (torch,
timm, accelerate and datasets' modules garbage-collected) would add its seconds to the end of every launch that has
workers (BENCHMARKS.md, "GPU check"). Nothing in the server needs it: the workers it forked end on their own
(os._exit), and its only resources are the training process's, released there.
"""
import atexit

from .process_exit import end_process

# registered after multiprocessing's own handler, so it runs first (atexit runs last-in first)
atexit.register(end_process, 0)
