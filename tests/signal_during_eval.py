"""train.py that sends itself SIGTERM during an evaluation, as a preemption may come at any moment of an epoch:

    SIGNAL_DURING_EVAL=RANK,EVALUATION,BATCH [accelerate launch ...] tests/signal_during_eval.py [train.py flags]

Rank RANK signals itself before it asks for batch BATCH (0-based) of its evaluation number EVALUATION (1-based, in
this launch), a real signal at a known point. Each rank writes OUTPUT_DIR/eval_batches_rank<RANK>.json at exit: the
batches each of its evaluations used. tests/test_gpu_ready.py runs it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from imagenet_trainer import metrics  # noqa: E402

used: list[int] = []  # batches used by each evaluation of this launch


def evaluate_signalling(rank: int, evaluation: int, batch: int, evaluate):
    def wrapped(accelerator, net, batches, *args, **kwargs):
        used.append(0)

        def counted():
            feed = iter(batches)
            while True:
                if accelerator.process_index == rank and (len(used), used[-1]) == (evaluation, batch):
                    os.kill(os.getpid(), signal.SIGTERM)
                try:
                    item = next(feed)
                except StopIteration:
                    return
                used[-1] += 1
                yield item

        return evaluate(accelerator, net, counted(), *args, **kwargs)
    return wrapped


def main() -> None:
    rank, evaluation, batch = map(int, os.environ["SIGNAL_DURING_EVAL"].split(","))
    metrics.evaluate = evaluate_signalling(rank, evaluation, batch, metrics.evaluate)
    argv = sys.argv[1:]
    out = Path(argv[argv.index("--output_dir") + 1])
    try:
        train.main(argv)
    finally:
        (out / f"eval_batches_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(used))


if __name__ == "__main__":
    main()
