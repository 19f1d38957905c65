"""A dataset for DataLoader worker faults, in a module of its own: a worker from a fork server or spawn imports the
dataset's module, and this one imports no more than torch."""
import os
import signal
import time

import torch


class FailingItems(torch.utils.data.Dataset):
    """Items 0-7; reading item ``die_at`` SIGKILLs the worker (the OOM killer), item ``hang_at`` sleeps for 120 s (a
    read blocked on storage)."""

    def __init__(self, die_at: int = -1, hang_at: int = -1):
        self.die_at, self.hang_at = die_at, hang_at

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == self.die_at:
            time.sleep(1)  # s: the items before reach this process (a worker's queue sends from a thread)
            os.kill(os.getpid(), signal.SIGKILL)
        if i == self.hang_at:
            time.sleep(120)
        return i
