"""A rank that lets go of its DDP model while its gloo worker thread is still inside a collective, then leaves through
train.py's way out (train.run_and_close): it must exit, not hang joining that thread. Rank 1 enters the all-reduce
3 s late, so rank 0's worker finishes it (and frees its tensor, which takes the GIL) during rank 0's teardown. Run
by tests/test_faults.py as two processes with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...):

    python tests/gloo_teardown.py {return,exit} RUN_DIR

`return` leaves as a finished run does (end_training, then main returns); `exit` as a stopped one (end_training,
then SystemExit(75) with the model still in main's frame)."""
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

LATE_S = 3.0  # rank 1's delay: far longer than rank 0's teardown takes


def main(argv: list[str]) -> None:
    how, run_dir = argv
    accelerator = train.make_accelerator(train.TrainConfig(model="resnet18", dataset="unused"), Path(run_dir))
    model = accelerator.prepare(torch.nn.Linear(4, 4))  # DDP: its C++ reducer holds the default group
    rank = dist.get_rank()
    if rank == 1:
        time.sleep(LATE_S)
    pending = torch.ones(1)
    dist.all_reduce(pending, async_op=True)
    del pending  # the worker thread's reference is now the last: freeing it needs the GIL
    accelerator.end_training()  # destroys the default group: DDP's reducer and train.WORLD_GROUP still hold it
    print(f"rank {rank} {model.__class__.__name__} {time.time():.3f}", flush=True)
    if how == "exit":
        raise SystemExit(train.STOPPED_STATUS)


if __name__ == "__main__":
    train.run_and_close(main, sys.argv[1:])
    print(f"closed {time.time():.3f}", flush=True)
