"""train.py with every wait of the host for the device counted while it trains.

    [accelerate launch ...] benchmarks/sync_probe.py --out_dir DIR [--compile_backend eager] train.py [train.py flags]

A GPU is fed only while the host runs ahead of it: each read of a device tensor by the host (``.item()``,
``.tolist()``, ``.cpu()``, ``bool()``) drains the queue first. train.py's budget is one such read per
``--log_every_steps`` interval (the stop agreement, the NaN guard and the running loss share it) and one at the
epoch's end. This runs train.py's own ``main()`` and counts, while ``EpochTrainer`` trains (its ``train`` and
``finish``; evaluation and checkpoints wait for the device by nature and are not counted), on each rank:

- ``host_reads``: calls of those four Tensor methods (on host tensors too: an upper bound on any device);
- ``collectives``: torch.distributed all-reduces, broadcasts, all-gathers, reduce-scatters and barriers;
- ``cuda_syncs`` (CUDA only, else null): every call torch itself flags as synchronizing
  (``torch.cuda.set_sync_debug_mode("warn")``: device-to-host copies, blocking host-to-device copies from pageable
  memory, stream and device synchronizes), with ``cuda_sync_sites``: the source lines that made them;
- ``steps`` (optimizer steps counted) and ``graphs`` (the graphs torch.compile captured);
- ``per_epoch``: the counts of each epoch (or part of one a launch trained) apart, as the first epoch's include
  what a first step does once (a cold ``--compile`` synchronizes while it compiles).

One JSON a rank: DIR/rank<RANK>.json. ``--compile_backend eager`` counts the graphs dynamo captures (the ones
Inductor would compile) without compiling them. tests/test_gpu_ready.py holds the bound on 2 CPU processes;
benchmarks/gpu_check.sh runs its train_recipe stage through this on the GPU.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

STARTED = time.monotonic()  # the script's run_info.json startup_s counts from here, torch's import included
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def script_at(argv: list[str]) -> int | None:
    """Where the training script stands in the probe's arguments (the first *.py), or None."""
    return next((i for i, a in enumerate(argv) if a.endswith(".py")), None)


if __name__ == "__main__":  # as train.py's first lines: the workers' fork server imports beside this process
    from imagenet_trainer import worker_processes

    at = script_at(sys.argv[1:])
    worker_processes.start_early([] if at is None else sys.argv[at + 2:])

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from imagenet_trainer.config import parse_config  # noqa: E402
from imagenet_trainer.process_exit import exit_now  # noqa: E402

CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"  # c10/cuda's text for set_sync_debug_mode("warn")
HOST_READS = ("item", "tolist", "cpu", "__bool__")
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "barrier")
# the single-tensor gather and reduce-scatter (FSDP2's): torch 2.13+ calls *_single, which its deprecated *_tensor
# names call in turn, torch 2.11 has the *_tensor ones only; the first that exists is counted, each call once
TENSOR_COLLECTIVES = (("all_gather_single", "all_gather_into_tensor"),
                      ("reduce_scatter_single", "reduce_scatter_tensor"))


@dataclass(kw_only=True)
class ProbeConfig:
    out_dir: str  # where each rank writes rank<RANK>.json
    compile_backend: str = ""  # torch.compile backend for train.py's --compile ("": train.py's own, Inductor)


class Probe:
    """The counts of one rank; `active` only while EpochTrainer trains."""

    def __init__(self):
        self.counts = {"host_reads": 0, "collectives": 0, "steps": 0,
                       "cuda_syncs": 0 if torch.cuda.is_available() else None}
        self.sites = Counter()
        self.active = False
        self.epochs, self.at_last_epoch = [], dict(self.counts)  # the counts of each epoch (each finish) apart

    def counting(self, fn, key: str):
        def wrapper(*args, **kwargs):
            if self.active:
                self.counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    def around_training(self, method):
        """EpochTrainer.train/finish, counted: optimizer steps from the trainer's state, CUDA's flags turned on."""
        def wrapper(trainer, *args, **kwargs):
            before, self.active = trainer.state.step, True
            if self.counts["cuda_syncs"] is not None:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                return method(trainer, *args, **kwargs)
            finally:
                if self.counts["cuda_syncs"] is not None:
                    torch.cuda.set_sync_debug_mode("default")
                self.active = False
                self.counts["steps"] += trainer.state.step - before
                if method.__name__ == "finish":
                    self.epochs.append({k: v if v is None else v - self.at_last_epoch[k]
                                        for k, v in self.counts.items()})
                    self.at_last_epoch = dict(self.counts)
        return wrapper

    def cuda_warning(self, show):
        """warnings.showwarning that counts CUDA's sync flags (with their source lines) instead of printing them."""
        def wrapper(message, category, filename, lineno, file=None, line=None):
            if CUDA_SYNC_WARNING not in str(message):
                return show(message, category, filename, lineno, file, line)
            if self.active:
                self.counts["cuda_syncs"] += 1
                self.sites[project_line(filename, lineno)] += 1
        return wrapper


def project_line(filename: str, lineno: int) -> str:
    """'path:line' of the innermost caller in this project (train.py, imagenet_trainer/, modeling/) on the stack,
    else the line the warning names (inside a library)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if ROOT in path.parents and "site-packages" not in path.parts and path != Path(__file__).resolve():
            return f"{path.relative_to(ROOT)}:{frame.f_lineno}"
        frame = frame.f_back
    return f"{filename}:{lineno}"


def count_cuda_warnings(probe: Probe) -> None:
    """CUDA's sync flags reach Python as warnings: each one to `probe` (the default filter would show a source
    line's once), the rest printed as before."""
    warnings.filterwarnings("always", message=CUDA_SYNC_WARNING)
    warnings.showwarning = probe.cuda_warning(warnings.showwarning)


def main(argv: list[str]) -> None:
    at = script_at(argv)
    if at is None and {"-h", "--help"} & set(argv):
        parse_config(ProbeConfig, ["--help"], description=__doc__.split("\n")[0])  # prints, exits 0
    if at is None:
        raise SystemExit("error: name the training script after the probe's flags: "
                         "sync_probe.py --out_dir DIR train.py [flags]")
    cfg = parse_config(ProbeConfig, argv[:at], description=__doc__.split("\n")[0])
    script, script_args = argv[at], argv[at + 1:]
    probe = Probe()
    for name in HOST_READS:
        setattr(torch.Tensor, name, probe.counting(getattr(torch.Tensor, name), "host_reads"))
    for name in (*COLLECTIVES, *(next(n for n in names if hasattr(dist, n)) for names in TENSOR_COLLECTIVES)):
        setattr(dist, name, probe.counting(getattr(dist, name), "collectives"))
    count_cuda_warnings(probe)
    if cfg.compile_backend:
        compile_ = torch.compile
        torch.compile = lambda model, **kw: compile_(model, **{**kw, "backend": cfg.compile_backend})

    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # the script's own imports, as when run directly
    module = runpy.run_path(script, run_name="probed")  # defines, does not run main()
    trainer = module["EpochTrainer"]
    trainer.train, trainer.finish = probe.around_training(trainer.train), probe.around_training(trainer.finish)
    # main() reads its module's globals (run_path returned a copy of them): this process started before the probe's
    # imports, and run_info.json's startup_s counts them
    module["main"].__globals__["STARTED"] = STARTED
    module["run_and_close"](module["main"], script_args)  # as train.py's __main__: its process groups closed in order

    from torch._dynamo.utils import counters
    report = {**probe.counts, "graphs": counters["stats"]["unique_graphs"],
              "cuda_sync_sites": dict(probe.sites.most_common(10)), "per_epoch": probe.epochs}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_now()  # as train.py ends: the probed launch's seconds are a plain one's
