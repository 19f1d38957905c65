#!/usr/bin/env bash
# The GPU paths end to end, in one go (about 8 minutes on one H100/H200 with 16 cores); writes one JSON.
#
#   bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.json]   # on a machine with one GPU
#   bash benchmarks/gpu_check.sh --cpu [--out F.json]                        # dry run: every step tiny, on the CPU
#
# 1. step throughput, bf16 autocast + channels_last, synthetic resident batches: resnet50 and convnext_tiny, each
#    without and with torch.compile (benchmarks/train_loop.py --synthetic_only)
# 2. a few hundred optimizer steps of real train.py (resnet50, bf16) on a generated ImageNet-shaped tree (500 px
#    photos with grain, ~110 KB JPEGs), every core a DataLoader worker: images/s and data_wait_frac
# 3. FSDP2 on one process (accelerate_configs/fsdp.yaml, convnext_tiny): a run that stops at a checkpoint, then
#    --resume_from_checkpoint latest to the end
# 4. validate.py on step 2's export: its top-1 against the model card's
# BENCHMARKS.md ("GPU check") says how to read the JSON. With --cpu, step 1 is not run (its rows say "not measured"),
# steps 2-4 run a tiny model on a tiny tree, so the script itself is tested in CI (tests/test_benchmarks.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
ACCELERATE="$(dirname "$PY")/accelerate"
OUT="$ROOT/benchmarks/results/gpu_check.json"
CPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "error: unknown argument $1 (use --cpu and/or --out FILE.json)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$CPU" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU visible to $PY; run on a GPU machine, or add --cpu for the dry run" >&2
  exit 2
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
CORES="$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")"
mkdir -p "$(dirname "$OUT")"

if [ "$CPU" = 1 ]; then
  # tiny everything: the point is that each step runs and the JSON has its shape
  TREE=(--num_classes 4 --train_per_class 8 --val_per_class 2 --num_test 1)
  TRAIN=(--model blocknet_tiny --image_size 32 --batch_size 8 --epochs 2)
  FSDP=(--model blocknet_tiny --image_size 32 --batch_size 4)
  FSDP_STEPS=(2 4)
  PRECISION=(--config_file "$ROOT/accelerate_configs/cpu.yaml")
  VAL_BATCH=8
else
  # 10 classes x 320 = 3,200 train images, resnet50 at batch 128: 25 steps an epoch, 8 epochs = 200 steps
  TREE=(--num_classes 10 --train_per_class 320 --val_per_class 20 --num_test 1 --long_side 500 --grain 32)
  TRAIN=(--model resnet50 --image_size 224 --batch_size 128 --epochs 8)
  FSDP=(--model convnext_tiny --image_size 224 --batch_size 64)
  FSDP_STEPS=(30 60)
  PRECISION=(--config_file "$ROOT/accelerate_configs/single_gpu.yaml")
  VAL_BATCH=256
fi
COMMON=(--num_workers "$CORES" --warmup_epochs 1 --log_every_steps 25 --lr 0.1)
START=$SECONDS
phase() { echo "== $1 ($((SECONDS - START)) s)" >&2; }

# 1. step throughput
phase "1/4 step throughput, bf16 + channels_last"
for model in resnet50 convnext_tiny; do
  for compile in false true; do
    json="$WORK/throughput_${model}_compile_${compile}.json"
    if [ "$CPU" = 1 ]; then
      echo "{\"model\": \"$model\", \"compile\": $compile, \"img_s\": \"not measured\"}" > "$json"
    else
      flags=(--synthetic_only --bf16 --model "$model" --batch_size 256 --image_size 224 --steps 50)
      [ "$compile" = true ] && flags+=(--compile)
      "$PY" "$ROOT/benchmarks/train_loop.py" "${flags[@]}" --output "$json" >&2
    fi
  done
done

# 2. real train.py on an ImageNet-shaped tree
phase "2/4 train.py on a generated tree, $CORES DataLoader workers"
"$PY" -m imagenet_trainer.demo --output "$WORK/tree" --source photos "${TREE[@]}" >&2
"$PY" "$ROOT/preprocess.py" --data_dir "$WORK/tree" --output_dir "$WORK/ds" --num_proc "$CORES" >&2
"$ACCELERATE" launch "${PRECISION[@]}" "$ROOT/train.py" --dataset "$WORK/ds" --output_dir "$WORK/train" \
  "${TRAIN[@]}" "${COMMON[@]}" >&2

# 3. FSDP2 on one process, stopped at a checkpoint and resumed
phase "3/4 FSDP2, one process, with a resume"
fsdp() {
  "$ACCELERATE" launch --config_file "$ROOT/accelerate_configs/fsdp.yaml" --num_processes 1 \
    $([ "$CPU" = 1 ] && echo --mixed_precision no) "$ROOT/train.py" --dataset "$WORK/ds" \
    --output_dir "$WORK/fsdp" --ema_decay 0 --epochs 100 --save_every_steps "${FSDP_STEPS[0]}" "${FSDP[@]}" \
    "${COMMON[@]}" "$@" >&2
}
fsdp --max_train_steps "${FSDP_STEPS[0]}"
fsdp --max_train_steps "${FSDP_STEPS[1]}" --resume_from_checkpoint latest 2>&1 | tee "$WORK/fsdp_resume.log" >&2

# 4. validate.py on the export of step 2
phase "4/4 validate.py on the train.py export"
"$ACCELERATE" launch "${PRECISION[@]}" "$ROOT/validate.py" --model "$WORK/train/final" --dataset "$WORK/ds" \
  --batch_size "$VAL_BATCH" --num_workers "$CORES" --output "$WORK/validate.json" >&2


phase "writing $OUT"
"$PY" - "$WORK" "$OUT" "$CPU" "$((SECONDS - START))" <<'PYEOF'
import json, os, platform, re, sys
from pathlib import Path

import torch
import yaml

work, out, cpu, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])


def rows(run):
    return [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]


def info(run):
    return json.loads((work / run / "run_info.json").read_text())


def mean(values):
    return sum(values) / len(values)


throughput = []
for path in sorted(work.glob("throughput_*.json")):
    r = json.loads(path.read_text())
    if "config" in r:  # benchmarks/train_loop.py's output
        r = {"model": r["config"]["model"], "compile": r["config"]["compile"], "img_s": round(r["bare_img_s"], 1),
             "batch_size": r["config"]["batch_size"], "image_size": r["config"]["image_size"]}
    throughput.append({**r, "bf16": True, "channels_last": True})

train, train_cfg = rows("train"), yaml.safe_load((work / "train" / "config.yaml").read_text())
steady = train[1:] or train  # the first epoch holds the cuDNN autotuning and the workers' start
fsdp = rows("fsdp")
resumed = re.search(r"resumed from \S+ at epoch \d+, step (\d+)", (work / "fsdp_resume.log").read_text())
card = re.search(r"^\|[^|]+\| validation \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$",
                 (work / "train" / "final" / "README.md").read_text(), re.M)
val = json.loads((work / "validate.json").read_text())
report = {
    "mode": "cpu dry run: GPU rows not measured, the rest tiny" if cpu else "gpu",
    "machine": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                "torch": torch.__version__, "cuda": torch.version.cuda},
    "throughput": throughput,
    "train_py": {**{k: train_cfg[k] for k in ("model", "batch_size", "image_size", "num_workers")},
                 "mixed_precision": info("train")["mixed_precision"], "steps": train[-1]["step"],
                 "images_per_sec": round(mean([r["images_per_sec"] for r in steady]), 1),
                 "data_wait_frac": round(mean([r["data_wait_frac"] for r in steady]), 3),
                 "cudnn_benchmark": info("train")["cudnn_benchmark"], "tf32_matmul": info("train")["tf32_matmul"],
                 "val_top1": train[-1]["val_top1"]},
    "fsdp": {"measured": info("fsdp")["distributed_type"] == "DistributedType.FSDP",
             "distributed_type": info("fsdp")["distributed_type"], "mixed_precision": info("fsdp")["mixed_precision"],
             "resumed_at_step": int(resumed.group(1)) if resumed else None, "final_step": fsdp[-1]["step"],
             "images_per_sec": round(fsdp[-1]["images_per_sec"], 1), "val_top1": fsdp[-1]["val_top1"]},
    "validate": {"top1": val["top1"], "top5": val["top5"], "n": val["n"],
                 "images_per_sec": round(val["images_per_sec"], 1),
                 "card_top1": float(card.group(2)) if card else None,
                 "matches_card": bool(card) and float(card.group(2)) == round(val["top1"], 2)},
    "elapsed_s": elapsed,
}
out.write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PYEOF
