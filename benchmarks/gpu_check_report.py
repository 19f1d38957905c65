"""benchmarks/gpu_check.sh's report: the figures of every stage found in its work folder, written whole to its JSON
after each stage, and two helpers the script calls.

    python benchmarks/gpu_check_report.py WORK OUT CPU ELAPSED SHORT_SIDE GOAL_IMG_S GOAL_WAIT_FRAC GOAL_CORES STAGES
    python benchmarks/gpu_check_report.py --feed WORK   # "RATE STAGE": the rate the workers stage sizes the loader for
    python benchmarks/gpu_check_report.py --tail LOG    # the end of a failed stage's log, as the JSON's log_tail

CPU is 1 for the --cpu dry run, STAGES the stages asked for (one argument, space-separated). BENCHMARKS.md ("GPU
check") says how to read the JSON.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml

TAIL_LINES = 15
# a frame of `accelerate launch` itself: its traceback ends a failed launch's log and names only the command
LAUNCHER_FRAME = re.compile(r'^\s*File ".*[/\\]accelerate[/\\]commands[/\\]launch\.py"')
LAUNCHER_ERROR = re.compile(r"^subprocess\.CalledProcessError: Command .*?(returned non-zero exit status -?\d+|died "
                            r"with <[^>]*>)\.?$")


def log_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The end of a failed stage's log. A train.py or validate.py launch that fails ends with the launcher's own
    traceback (a CalledProcessError, 15 lines and more of accelerate's frames), which would push the script's own
    error out of the tail: that traceback becomes one line, so the lines before it (the error) stay in view."""
    rows = text.splitlines()
    ends = [i for i, row in enumerate(rows) if LAUNCHER_ERROR.match(row)]
    if ends:
        end = ends[-1]
        starts = [i for i in range(end) if rows[i].startswith("Traceback (most recent call last):")]
        if starts and any(LAUNCHER_FRAME.match(row) for row in rows[starts[-1]:end]):
            before = rows[:starts[-1]]
            while before and (not before[-1].strip() or before[-1].startswith(
                    ("The above exception was the direct cause", "During handling of the above exception"))):
                before.pop()
            status = LAUNCHER_ERROR.match(rows[end]).group(1)
            rows = [*before, f"(accelerate launch's traceback left out: the command {status})", *rows[end + 1:]]
    return rows[-lines:]


def over_epochs(table: list[dict]) -> dict:
    """metrics.jsonl rows taken together: images over seconds, seconds waited over seconds. A mean of the rows' rates
    would weigh a fast epoch as much as a slow one although it took less of the time. The steady figures leave out
    each epoch's wait for its first batch, as train.py's rows do."""
    seconds = max(sum(r["train_s"] for r in table), 1e-9)
    steady_seconds = max(sum(r["train_s"] - r["first_batch_s"] for r in table), 1e-9)
    images = sum(r["images_per_sec"] * r["train_s"] for r in table)
    return {"images_per_sec": round(images / seconds, 1), "images_per_sec_steady": round(images / steady_seconds, 1),
            "data_wait_frac": round(sum(r["data_wait_frac"] * r["train_s"] for r in table) / seconds, 3),
            "data_wait_steady_frac": round(sum(r["data_wait_steady_frac"] * (r["train_s"] - r["first_batch_s"])
                                               for r in table) / steady_seconds, 3)}


def feed_rate(work: Path) -> tuple[float | None, str | None]:
    """(img/s, stage): the rate the loader has to keep up with, the fastest steady epoch of the train.py stages at
    the recipe's settings that ran before the workers stage; (None, None) where none did (nothing measured)."""
    best: tuple[float | None, str | None] = (None, None)
    for run in ("train_recipe", "train_8cores"):
        table = work / run / "metrics.jsonl"
        if not table.is_file():
            continue
        for line in table.read_text().splitlines():
            rate = round(json.loads(line)["images_per_sec_steady"], 1)
            if best[0] is None or rate > best[0]:
                best = (rate, run)
    return best


class Report:
    def __init__(self, work: Path, cpu: bool, short_side: int, goal: dict):
        self.work, self.cpu, self.short_side, self.goal = work, cpu, short_side, goal

    def rows(self, run):
        return [json.loads(line) for line in (self.work / run / "metrics.jsonl").read_text().splitlines()]

    def train_py(self, run):
        work = self.work
        table, cfg = self.rows(run), yaml.safe_load((work / run / "config.yaml").read_text())
        info = json.loads((work / run / "run_info.json").read_text())
        steady = table[1:] or table  # the first epoch holds cuDNN autotuning, compilation and the workers' start
        log = (work / f"{run}.log").read_text()
        launch = json.loads((work / f"{run}_launch.json").read_text())
        keys = ("model", "batch_size", "image_size", "eval_image_size", "num_workers", "compile")
        return {**{k: cfg[k] for k in keys},
                "cpus": launch["cpus"], "cores": launch["cores"], "graphs_compiled": launch["graphs_compiled"],
                "mixed_precision": info["mixed_precision"], "steps": table[-1]["step"],
                # images_per_sec_steady and data_wait_steady_frac leave out each epoch's wait for its first batch
                # (worker refill), which short epochs weigh far more than ImageNet's do: what says whether the
                # loader keeps up
                **over_epochs(steady),
                "first_epoch_images_per_sec": round(table[0]["images_per_sec"], 1),
                "first_batch_s": mean([r["first_batch_s"] for r in steady]),
                "recompiles": len(re.findall(r"Recompiling function", log)),
                "cudnn_benchmark": info["cudnn_benchmark"], "tf32_matmul": info["tf32_matmul"],
                "val_top1": table[-1]["val_top1"], "first_epoch_train_s": round(table[0]["train_s"], 2),
                "seconds_split": split(table, info), "startup_split_s": info["startup_split_s"],
                "worker_server_started_s": info["worker_server_started_s"],
                **self.syncs(run, cfg["log_every_steps"])}

    def syncs(self, run, log_every):
        """benchmarks/sync_probe.py's counts (rank 0) of a run launched through it, or {}: the epochs after the first
        (whose first step may compile), against train.py's budget of one wait a log interval and one an epoch's
        end."""
        path = self.work / f"{run}_syncs" / "rank0.json"
        if not path.is_file():
            return {}
        probe = json.loads(path.read_text())
        steady = probe["per_epoch"][1:] or probe["per_epoch"]
        kind = "host_reads" if probe["cuda_syncs"] is None else "cuda_syncs"  # CUDA's own count where there is one
        steps, waits = sum(e["steps"] for e in steady), sum(e[kind] for e in steady)
        # + the epoch's end, + off CUDA the DataLoader iterator's base seed (a host tensor read once an epoch)
        budget = steps // log_every + len(steady) * (1 if kind == "cuda_syncs" else 2)
        return {"syncs": {"counted": kind, "steady_steps": steps, "steady_waits": waits, "budget": budget,
                          "within_budget": waits <= budget, "per_epoch": [e[kind] for e in probe["per_epoch"]],
                          "collectives": probe["collectives"], "sites": probe["cuda_sync_sites"]}}

    def train_8cores(self):
        run, table, goal = self.train_py("train_8cores"), self.rows("train_8cores"), self.goal
        met = (run["images_per_sec_steady"] >= goal["img_s"] and run["data_wait_steady_frac"] < goal["wait_frac"]
               and run["cores"] <= goal["cores"])
        return {**run, "dataset": f"preprocess.py --shorter_side {self.short_side}", "workers": run["num_workers"],
                "steps_per_epoch": table[0]["step"],
                "steady_epochs": len(table) - 1,
                "per_epoch": [{"images_per_sec": round(r["images_per_sec"], 1),
                               "images_per_sec_steady": round(r["images_per_sec_steady"], 1),
                               "data_wait_frac": round(r["data_wait_frac"], 3),
                               "data_wait_steady_frac": round(r["data_wait_steady_frac"], 3),
                               "first_batch_s": round(r["first_batch_s"], 3),
                               "train_s": round(r["train_s"], 2)} for r in table],
                "goal": {"images_per_sec_steady_at_least": goal["img_s"],
                         "data_wait_steady_frac_below": goal["wait_frac"],
                         "cores_at_most": int(goal["cores"])},
                "goal_met": None if self.cpu else met}

    def throughput(self):
        runs = []
        for path in sorted(self.work.glob("throughput_*.json")):
            if path.name == "throughput_launch.json":
                continue
            r = json.loads(path.read_text())  # benchmarks/train_loop.py's output
            runs.append({"model": r["config"]["model"], "image_size": r["config"]["image_size"],
                         "compile": r["config"]["compile"], "img_s": round(r["bare_img_s"], 1),
                         "batch_size": r["config"]["batch_size"], "bf16": r["config"]["bf16"],
                         "channels_last": True})
        return {**json.loads((self.work / "throughput_launch.json").read_text()), "runs": runs}

    def sweep(self, prefix):
        """(the loader.py self-test reports of one copy, fewest workers first; its points)."""
        points = [p for p in self.work.glob(f"{prefix}_*.json") if p.stem.split("_")[-1].isdigit()]  # not _launch
        runs = [json.loads(p.read_text()) for p in sorted(points, key=lambda p: int(p.stem.split("_")[-1]))]
        return runs, [{"workers": s["config"]["num_workers"], "img_s": s["pipelines"]["train"]["ours_img_s"],
                       "img_s_per_worker": s["pipelines"]["train"]["img_s_per_core"]} for s in runs]

    def workers(self):
        short_side, goal = self.short_side, self.goal
        runs, points = self.sweep("workers")
        small_runs, small = self.sweep(f"workers{short_side}")
        launch = json.loads((self.work / "workers_launch.json").read_text())
        feed = launch["feed_img_s"]  # null where no train.py stage at the recipe's settings ran before it

        def cores_to_feed(rate, sweep_points):
            return None if rate is None else cores_for(rate, sweep_points)
        return {"cpus": launch["cpus"], "beside": launch["beside"].split(),
                "image_size": runs[0]["config"]["image_size"], "feed_img_s": feed,
                "feed_source": launch["feed_source"] or "not measured", "goal_img_s": goal["img_s"],
                "sweep": points, "cores_per_gpu": cores_to_feed(feed, points),
                "cores_at_goal": cores_for(goal["img_s"], points),
                f"sweep_{short_side}": small, f"cores_per_gpu_{short_side}": cores_to_feed(feed, small),
                f"cores_at_goal_{short_side}": cores_for(goal["img_s"], small),
                # CPU us a train sample spends in each step, on each copy (its first point's --profile)
                "train_profile_us": {copy: profile(runs_of_copy) for copy, runs_of_copy in
                                     (("originals", runs), (str(short_side), small_runs)) if runs_of_copy}}

    def fsdp(self):
        work, table = self.work, self.rows("fsdp")
        info = json.loads((work / "fsdp" / "run_info.json").read_text())
        resumed = re.search(r"resumed from \S+ at epoch \d+, step (\d+)", (work / "fsdp.log").read_text())
        resumes = sorted((work / "fsdp" / "resumes").glob("*/run_info.json"))
        launches = [info, *(json.loads(p.read_text()) for p in resumes)]
        # each launch's steps and its training seconds after its first batch came (the workers' start left out)
        runs = [{"steps": row["step"] - before, "train_s": round(row["train_s"], 2),
                 "first_batch_s": round(row["first_batch_s"], 2),
                 "computing_s": row["train_s"] - row["first_batch_s"]}
                for row, before in zip(table, [0] + [row["step"] for row in table])]
        step_s = one_time_s = None
        if len(runs) == 2 and runs[0]["steps"] != runs[1]["steps"]:  # seconds = one_time + steps x step, per launch
            step_s = (runs[1]["computing_s"] - runs[0]["computing_s"]) / (runs[1]["steps"] - runs[0]["steps"])
            one_time_s = runs[0]["computing_s"] - runs[0]["steps"] * step_s
        return {**json.loads((work / "fsdp_launch.json").read_text()),
                "measured": info["distributed_type"] == "DistributedType.FSDP",
                "startup_s": [launch["startup_s"] for launch in launches],  # the first launch's, the resumed one's
                "distributed_type": info["distributed_type"], "mixed_precision": info["mixed_precision"],
                "resumed_at_step": int(resumed.group(1)) if resumed else None, "final_step": table[-1]["step"],
                "images_per_sec": round(table[-1]["images_per_sec"], 1), "val_top1": table[-1]["val_top1"],
                "launches": [{k: v for k, v in run.items() if k != "computing_s"} for run in runs],
                "step_s": None if step_s is None else round(step_s, 3),
                "one_time_s": None if one_time_s is None else round(one_time_s, 2)}

    def validate(self):
        work = self.work
        card = re.search(r"^\|[^|]+\| validation \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$",
                         (work / "train_recipe" / "final" / "README.md").read_text(), re.M)
        val = json.loads((work / "validate.json").read_text())
        return {**json.loads((work / "validate_launch.json").read_text()), "top1": val["top1"], "top5": val["top5"],
                "n": val["n"], "images_per_sec": round(val["images_per_sec"], 1),
                "card_top1": float(card.group(2)) if card else None,
                "matches_card": bool(card) and float(card.group(2)) == round(val["top1"], 2)}

    def tree(self):
        short_side = self.short_side
        small = json.loads((self.work / f"ds{short_side}" / "preprocess_report.json").read_text())
        images = sum(small["counts"].values())
        return {**json.loads((self.work / "tree_launch.json").read_text()),
                "images": small["counts"], "mean_kb": round(small["bytes_in"] / 1024 / max(1, images), 1),
                f"shorter_side_{short_side}": {
                    "images": small["counts"], "skipped": len(small["skipped"]), "tiled": small["tiled"],
                    "mean_kb_stored": round(small["bytes_out"] / 1024 / max(1, images), 1),
                    "preprocess_seconds": small["seconds"], "preprocess_img_s": rate(images, small["seconds"])}}

    def originals(self):
        report = json.loads((self.work / "ds" / "preprocess_report.json").read_text())
        images = sum(report["counts"].values())
        return {**json.loads((self.work / "originals_launch.json").read_text()),
                "images": report["counts"], "skipped": len(report["skipped"]), "tiled": report["tiled"],
                "preprocess_seconds": report["seconds"], "preprocess_img_s": rate(images, report["seconds"])}

    def stages(self) -> dict:
        readers = {"tree": self.tree, "throughput": self.throughput, "train_8cores": self.train_8cores,
                   "originals": self.originals, "train_recipe": lambda: self.train_py("train_recipe"),
                   "workers": self.workers, "validate": self.validate, "fsdp": self.fsdp,
                   "train_eager": lambda: self.train_py("train_eager")}
        stages = {}
        for name, read in readers.items():
            done = self.work / "stages" / f"{name}.json"
            if not done.is_file():
                continue
            stage = json.loads(done.read_text())
            try:
                stage.update(read()) if stage["status"] == 0 else None
            except Exception as e:  # noqa: BLE001 (ran, left no usable figures: the other stages' still count)
                stage.update(status="no figures", error=f"{type(e).__name__}: {e}")
            if "seconds_split" in stage:
                stage["seconds_split"]["other"] = round(stage["seconds"] - sum(stage["seconds_split"].values()), 2)
            if stage["status"] != 0:  # a log cut inside a progress bar's UTF-8 character still reads
                log = self.work / f"{name}.log"
                stage["log_tail"] = log_tail(log.read_text(errors="replace")) if log.is_file() else []
            stages[name] = stage
        originals, goal_run = stages.get("originals", {}), stages.get("train_8cores", {})
        if originals.get("beside_train_8cores") and "per_epoch" in goal_run:
            # whether the preprocess beside train_8cores ended before the epochs the goal is judged on began, in
            # seconds into the run: its end at the latest (whole seconds, rounded down), their start at the earliest
            # (the launcher's own start left out)
            first = self.rows("train_8cores")[0]
            epochs_from = goal_run["started_s"] + goal_run["seconds_split"]["startup"] + sum(
                first[f"{part}_s"] for part in ("train", "eval", "export", "checkpoint"))
            originals["ended_by_s"] = originals["started_s"] + originals["seconds"] + 1
            originals["goal_epochs_from_s"] = round(epochs_from, 1)
            originals["done_before_goal_epochs"] = originals["ended_by_s"] <= epochs_from
        return stages


def mean(values):
    return round(sum(values) / len(values), 3)


def split(table, info):
    """Where a train.py launch's seconds went: from train.py's start to its first step, then its epochs' training,
    evaluation, export and checkpoints (the caller adds `other`: what is left of the stage, mostly the launcher's
    start and the exit)."""
    return {"startup": info["startup_s"],
            **{part: round(sum(r[f"{part}_s"] for r in table), 2)
               for part in ("train", "eval", "export", "checkpoint")}}


def cores_for(img_s, points):
    # that rate over the per-worker rate of the largest run (the most pessimistic: per-worker rates fall as workers
    # share caches and memory bandwidth), plus one core for the main process
    return None if not points else round(img_s / points[-1]["img_s_per_worker"] + 1, 1)


def profile(runs):
    return next(iter(runs[0].get("train_profile_us", {}).values()), None)


def rate(images, seconds):  # preprocess_report.json's seconds are rounded to the ms
    return round(images / seconds, 1) if seconds else None


def main(argv: list[str]) -> None:
    if argv[:1] == ["--feed"]:
        feed, source = feed_rate(Path(argv[1]))
        print("" if feed is None else f"{feed} {source}")
        return
    if argv[:1] == ["--tail"]:
        print("\n".join(log_tail(Path(argv[1]).read_text(errors="replace"))))
        return
    work, out, cpu, elapsed = Path(argv[0]), Path(argv[1]), argv[2] == "1", int(argv[3])
    goal = dict(zip(("img_s", "wait_frac", "cores"), map(float, argv[5:8])))
    asked = argv[8].split()
    stages = Report(work, cpu, int(argv[4]), goal).stages()
    report = {
        "mode": "cpu dry run: a tiny model on a tiny tree, no GPU figure" if cpu else "gpu",
        "machine": json.loads((work / "machine.json").read_text()),
        "stages": stages,
        "pending": [name for name in asked if name not in stages],  # asked for, not reached (yet)
        "elapsed_s": elapsed,
    }
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two stages side by side may both report
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1:])
