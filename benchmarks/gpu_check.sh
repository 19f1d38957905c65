#!/usr/bin/env bash
# The GPU paths end to end, in one short run (about 7 minutes on one H100/H200 with 16 cores); writes one JSON.
#
#   bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.json]   # on a machine with one GPU
#   bash benchmarks/gpu_check.sh --cpu [--out F.json]                        # dry run: every stage tiny, on the CPU
#   bash benchmarks/gpu_check.sh --stages tree,train_recipe,workers          # some stages only (tree first)
#
# Stages, each timed and recorded on its own: a stage that fails is reported with the end of its log and the
# others still run; the JSON is rewritten after every stage, so a run stopped early keeps what it measured. Every
# stage's full log lands beside it in F_logs.tar.gz.
#   tree        an ImageNet-shaped class-folder tree (500 px photos with grain, ~110 KB JPEGs) generated on every core,
#               then preprocess.py on every core
#   throughput  the accelerator's ceiling without a loader (benchmarks/train_loop.py --synthetic_only, bf16 autocast,
#               channels_last, resident batches, eager): resnet50 at 224 px and at the recipe's 192 px, convnext_tiny
#   train_eager real train.py (resnet50, bf16, 224 px, no compile), every core but one a DataLoader worker:
#               images/s and data_wait_frac after the first epoch
#   train_recipe the same at recipes/resnet50.yaml's settings (192 px, --compile), with recompiles logged
#   workers     the loader alone (benchmarks/loader.py self-test, 192 px) with 1, 2, 4, 8 workers, each run pinned to
#               workers + 1 cores: img/s per core, and the cores one GPU needs at train_recipe's rate
#   fsdp        FSDP2 on one process (accelerate_configs/fsdp.yaml, convnext_tiny): stop at a checkpoint, resume
#   validate    validate.py on train_eager's export: its top-1 against the model card's
# BENCHMARKS.md ("GPU check") says how to read the JSON. With --cpu the throughput rows say "not measured" and the
# other stages run a tiny model on a tiny tree, so the script itself is tested in CI (tests/test_benchmarks.py).
# GPU_CHECK_FAIL_STAGE=NAME makes that stage fail at its start (how the tests check that the others still report).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
ACCELERATE=("$PY" -m accelerate.commands.launch)
OUT="$ROOT/benchmarks/results/gpu_check.json"
CPU=0
ALL_STAGES=(tree throughput train_eager train_recipe workers fsdp validate)
STAGES=("${ALL_STAGES[@]}")
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out) OUT="$2"; shift ;;
    --stages) IFS=, read -r -a STAGES <<< "$2"; shift ;;
    *) echo "error: unknown argument $1 (use --cpu, --out FILE.json, --stages A,B)" >&2; exit 2 ;;
  esac
  shift
done
for name in "${STAGES[@]}"; do
  [[ " ${ALL_STAGES[*]} " == *" $name "* ]] ||
    { echo "error: --stages: unknown stage $name (stages: ${ALL_STAGES[*]})" >&2; exit 2; }
done
if [ "$CPU" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU visible to $PY; run on a GPU machine, or add --cpu for the dry run" >&2
  exit 2
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/stages" "$(dirname "$OUT")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
CORES="$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")"
WORKERS=$((CORES > 1 ? CORES - 1 : 1))  # one core stays with the main process

if [ "$CPU" = 1 ]; then
  # tiny everything: the point is that each stage runs and the JSON has its shape
  TREE=(--num_classes 4 --train_per_class 16 --val_per_class 4 --long_side 96)
  TRAIN=(--model blocknet_tiny --batch_size 8 --epochs 2)
  EAGER_SIZE=32; RECIPE_SIZE=32; RECIPE_EVAL=32; RECIPE_COMPILE=()
  FSDP=(--model blocknet_tiny --image_size 32 --batch_size 4)
  FSDP_STEPS=(2 4)
  PRECISION=(--config_file "$ROOT/accelerate_configs/cpu.yaml")
  SWEEP=(1 2); SWEEP_IMAGES=32; VAL_BATCH=8
else
  # 10 classes x 640 = 6,400 train images: resnet50 at batch 128 takes 50 steps an epoch, 4 epochs = 200 steps
  TREE=(--num_classes 10 --train_per_class 640 --val_per_class 20 --long_side 500 --grain 32)
  TRAIN=(--model resnet50 --batch_size 128 --epochs 4)
  EAGER_SIZE=224; RECIPE_SIZE=192; RECIPE_EVAL=224; RECIPE_COMPILE=(--compile)
  FSDP=(--model convnext_tiny --image_size 224 --batch_size 64)
  FSDP_STEPS=(30 60)
  PRECISION=(--config_file "$ROOT/accelerate_configs/single_gpu.yaml")
  SWEEP=(1 2 4 8); SWEEP_IMAGES=1000; VAL_BATCH=256
fi
COMMON=(--num_workers "$WORKERS" --warmup_epochs 1 --log_every_steps 25 --lr 0.1)
START=$SECONDS

# run_stage NAME FUNCTION: runs it with its output in $WORK/NAME.log, records status and seconds, rewrites the report
run_stage() {
  local name="$1" started=$SECONDS status=0
  echo "== $name ($((SECONDS - START)) s)" >&2
  if [ "${GPU_CHECK_FAIL_STAGE:-}" = "$name" ]; then
    echo "failing on purpose: GPU_CHECK_FAIL_STAGE=$name" > "$WORK/$name.log"; status=1
  else
    "$2" > "$WORK/$name.log" 2>&1 || status=$?
  fi
  echo "{\"status\": $status, \"seconds\": $((SECONDS - started))}" > "$WORK/stages/$name.json"
  [ "$status" = 0 ] || { echo "   $name failed (status $status); the end of its log:" >&2; tail -n 15 "$WORK/$name.log" >&2; }
  report
}

stage_tree() {
  "$PY" -m imagenet_trainer.demo --layout folders --output "$WORK/tree" --num_proc "$CORES" "${TREE[@]}" &&
  "$PY" "$ROOT/preprocess.py" --data_dir "$WORK/tree" --output_dir "$WORK/ds" --num_proc "$CORES"
}

stage_throughput() {
  local model size compile flags
  for run in "resnet50 224 false" "resnet50 $RECIPE_SIZE false" "convnext_tiny 224 false"; do
    read -r model size compile <<< "$run"
    json="$WORK/throughput_${model}_${size}_${compile}.json"
    if [ "$CPU" = 1 ]; then
      echo "{\"model\": \"$model\", \"image_size\": $size, \"compile\": $compile, \"img_s\": \"not measured\"}" > "$json"
      continue
    fi
    flags=(--synthetic_only --bf16 --model "$model" --batch_size 256 --image_size "$size" --steps 50)
    [ "$compile" = true ] && flags+=(--compile)
    "$PY" "$ROOT/benchmarks/train_loop.py" "${flags[@]}" --output "$json" || return 1
  done
}

train_run() {  # train_run OUTPUT_NAME IMAGE_SIZE EVAL_SIZE [more flags]
  local name="$1" size="$2" eval_size="$3"; shift 3
  TORCH_LOGS=recompiles "${ACCELERATE[@]}" "${PRECISION[@]}" "$ROOT/train.py" --dataset "$WORK/ds" \
    --output_dir "$WORK/$name" "${TRAIN[@]}" --image_size "$size" --eval_image_size "$eval_size" "${COMMON[@]}" "$@"
}
stage_train_eager() { train_run train_eager "$EAGER_SIZE" "$EAGER_SIZE"; }
stage_train_recipe() { train_run train_recipe "$RECIPE_SIZE" "$RECIPE_EVAL" "${RECIPE_COMPILE[@]}"; }

pinned() {  # pinned CPUS COMMAND...: run COMMAND on those cores only (unpinned where taskset is missing)
  if command -v taskset > /dev/null; then taskset -c "$@"; else shift; "$@"; fi
}
stage_workers() {
  local n last=$((CORES - 1)) feed
  feed="$("$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
for run in ("train_recipe", "train_eager"):  # the rate the GPU trains at: what the loader has to keep up with
    rows = Path(sys.argv[1], run, "metrics.jsonl")
    if rows.is_file():
        rows = [json.loads(line) for line in rows.read_text().splitlines()]
        print(round(max(r["images_per_sec"] for r in rows), 1))
        break
else:
    print(2800.0)
PYEOF
)"
  for n in "${SWEEP[@]}"; do
    [ "$n" -le "$last" ] || continue
    pinned "0-$n" "$PY" "$ROOT/benchmarks/loader.py" --dataset "$WORK/ds" --num_workers "$n" \
      --image_size "$RECIPE_SIZE" --num_images "$SWEEP_IMAGES" --repeats 2 --feed_img_s "$feed" \
      --output "$WORK/workers_$n.json" || return 1
  done
}

fsdp() {
  "${ACCELERATE[@]}" --config_file "$ROOT/accelerate_configs/fsdp.yaml" --num_processes 1 \
    $([ "$CPU" = 1 ] && echo --mixed_precision no) "$ROOT/train.py" --dataset "$WORK/ds" \
    --output_dir "$WORK/fsdp" --ema_decay 0 --epochs 100 --save_every_steps "${FSDP_STEPS[0]}" "${FSDP[@]}" \
    "${COMMON[@]}" "$@"
}
stage_fsdp() {
  fsdp --max_train_steps "${FSDP_STEPS[0]}" &&
  fsdp --max_train_steps "${FSDP_STEPS[1]}" --resume_from_checkpoint latest
}

stage_validate() {
  "${ACCELERATE[@]}" "${PRECISION[@]}" "$ROOT/validate.py" --model "$WORK/train_eager/final" --dataset "$WORK/ds" \
    --batch_size "$VAL_BATCH" --num_workers "$WORKERS" --output "$WORK/validate.json"
}

# report: every stage's figures that exist so far, to $OUT (atomically)
report() {
  "$PY" - "$WORK" "$OUT" "$CPU" "$((SECONDS - START))" <<'PYEOF'
import json, os, platform, re, sys
from pathlib import Path

import torch
import yaml

work, out, cpu, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])


def rows(run):
    return [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]


def mean(values):
    return round(sum(values) / len(values), 3)


def train_py(run):
    table, cfg = rows(run), yaml.safe_load((work / run / "config.yaml").read_text())
    info = json.loads((work / run / "run_info.json").read_text())
    steady = table[1:] or table  # the first epoch holds cuDNN autotuning, compilation and the workers' start
    log = (work / f"{run}.log").read_text()
    return {**{k: cfg[k] for k in ("model", "batch_size", "image_size", "eval_image_size", "num_workers", "compile")},
            "mixed_precision": info["mixed_precision"], "steps": table[-1]["step"],
            "images_per_sec": round(mean([r["images_per_sec"] for r in steady]), 1),
            "first_epoch_images_per_sec": round(table[0]["images_per_sec"], 1),
            "data_wait_frac": mean([r["data_wait_frac"] for r in steady]),
            "recompiles": len(re.findall(r"Recompiling function", log)),
            "cudnn_benchmark": info["cudnn_benchmark"], "tf32_matmul": info["tf32_matmul"],
            "val_top1": table[-1]["val_top1"]}


def throughput():
    runs = []
    for path in sorted(work.glob("throughput_*.json")):
        r = json.loads(path.read_text())
        if "config" in r:  # benchmarks/train_loop.py's output
            r = {"model": r["config"]["model"], "image_size": r["config"]["image_size"],
                 "compile": r["config"]["compile"], "img_s": round(r["bare_img_s"], 1),
                 "batch_size": r["config"]["batch_size"]}
        runs.append({**r, "bf16": True, "channels_last": True})
    return {"runs": runs}


def workers():
    sweep = [json.loads(p.read_text()) for p in sorted(work.glob("workers_*.json"),
                                                      key=lambda p: int(p.stem.split("_")[1]))]
    points = [{"workers": s["config"]["num_workers"], "img_s": s["pipelines"]["train"]["ours_img_s"],
               "img_s_per_worker": s["pipelines"]["train"]["img_s_per_core"]} for s in sweep]
    feed = sweep[0]["feed_img_s"]
    # the GPU's rate over the per-worker rate of the largest run (the most pessimistic: per-worker rates fall as
    # workers share caches and memory bandwidth), plus one core for the main process
    cores = None if not points else round(feed / points[-1]["img_s_per_worker"] + 1, 1)
    return {"image_size": sweep[0]["config"]["image_size"], "feed_img_s": feed, "sweep": points,
            "cores_per_gpu": cores}


def fsdp():
    table = rows("fsdp")
    info = json.loads((work / "fsdp" / "run_info.json").read_text())
    resumed = re.search(r"resumed from \S+ at epoch \d+, step (\d+)", (work / "fsdp.log").read_text())
    return {"measured": info["distributed_type"] == "DistributedType.FSDP",
            "distributed_type": info["distributed_type"], "mixed_precision": info["mixed_precision"],
            "resumed_at_step": int(resumed.group(1)) if resumed else None, "final_step": table[-1]["step"],
            "images_per_sec": round(table[-1]["images_per_sec"], 1), "val_top1": table[-1]["val_top1"]}


def validate():
    card = re.search(r"^\|[^|]+\| validation \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$",
                     (work / "train_eager" / "final" / "README.md").read_text(), re.M)
    val = json.loads((work / "validate.json").read_text())
    return {"top1": val["top1"], "top5": val["top5"], "n": val["n"], "images_per_sec": round(val["images_per_sec"], 1),
            "card_top1": float(card.group(2)) if card else None,
            "matches_card": bool(card) and float(card.group(2)) == round(val["top1"], 2)}


def tree():
    report = json.loads((work / "ds" / "preprocess_report.json").read_text())
    images = sum(report["counts"].values())
    return {"images": report["counts"], "skipped": len(report["skipped"]), "tiled": report["tiled"],
            "mean_kb": round(report["bytes_in"] / 1024 / max(1, images), 1),
            "preprocess_img_s": round(images / max(1e-9, report["seconds"]), 1)}


readers = {"tree": tree, "throughput": throughput, "train_eager": lambda: train_py("train_eager"),
           "train_recipe": lambda: train_py("train_recipe"), "workers": workers, "fsdp": fsdp, "validate": validate}
stages = {}
for name, read in readers.items():
    done = work / "stages" / f"{name}.json"
    if not done.is_file():
        continue
    stage = json.loads(done.read_text())
    try:
        stage.update(read()) if stage["status"] == 0 else None
    except (OSError, KeyError, IndexError, ValueError, AttributeError) as e:  # ran, but left no usable figures
        stage.update(status="no figures", error=f"{type(e).__name__}: {e}")
    if stage["status"] != 0:
        stage["log_tail"] = (work / f"{name}.log").read_text().splitlines()[-15:]
    stages[name] = stage
report = {
    "mode": "cpu dry run: GPU rows not measured, the rest tiny" if cpu else "gpu",
    "machine": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                "torch": torch.__version__, "cuda": torch.version.cuda},
    "stages": stages,
    "elapsed_s": elapsed,
}
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps(report, indent=2) + "\n")
os.replace(tmp, out)
PYEOF
}

for name in "${STAGES[@]}"; do
  run_stage "$name" "stage_$name"
done
tar -czf "${OUT%.json}_logs.tar.gz" -C "$WORK" $(cd "$WORK" && ls ./*.log)
echo "== done in $((SECONDS - START)) s: $OUT" >&2
cat "$OUT"
"$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['stages']; sys.exit(any(v['status'] != 0 for v in s.values()))" "$OUT"
