#!/usr/bin/env bash
# The GPU paths end to end, in one short run (minutes on one H100/H200; the JSON has each stage's seconds).
#
#   bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.json]   # on a machine with one GPU
#   bash benchmarks/gpu_check.sh --cpu [--out F.json]                        # dry run: every stage tiny, on the CPU
#   bash benchmarks/gpu_check.sh --stages tree,train_recipe,workers          # some stages only (tree: with originals)
#   PYTHON=/opt/env/bin/python bash benchmarks/gpu_check.sh                  # another interpreter (default: .venv's,
#                                                                            # else python3)
#
# Stages, each timed and recorded on its own, most telling first: a stage that fails is reported with the end of
# its log and the others still run; the JSON (its `pending`: the stages not reached yet) and F_logs.tar.gz (every
# finished stage's full log) are rewritten after every stage, so a run stopped early, or killed at a time limit,
# keeps all that it finished.
#   tree        an ImageNet-shaped class-folder tree (500 px photos with grain, ~110 KB JPEGs) generated on every core,
#               then preprocess.py's --shorter_side 256 copy of it on every core (the copy README.md recommends when
#               the cores per GPU are few, which train_8cores trains on)
#   throughput  the accelerator's ceiling without a loader (benchmarks/train_loop.py --synthetic_only, bf16 autocast,
#               channels_last, resident batches of 256, eager): resnet50 at 224 px and at the recipe's 192 px, and at
#               192 px with train.py's batch of 128 (its like-for-like ceiling). It needs the GPU and one core, tree no
#               GPU: run together, it has the last core and tree the others
#   train_8cores the goal "ResNet-50 >= 4,000 img/s on one GPU with <= 8 cores and data_wait_frac < 5%": real
#               train.py at recipes/resnet50.yaml's settings (bf16, 192 px, --compile, compiled cold as on a fresh
#               machine) on the 256 copy, the whole launch pinned to 8 cores with 7 workers, 5 epochs of 50 steps;
#               images/s and the steady data wait of the 4 after the first, and goal_met
#   originals   preprocess.py on the tree's originals, which the later stages train on; asked with tree. Beside
#               train_8cores, on the cores past its 8 where there are at least 4 of them: it ends during the cold
#               compile of train_8cores' first epoch, before the epochs the goal is judged on
#   train_recipe the recipe's settings on the originals, every core but one a DataLoader worker (its graphs loaded
#               from what train_8cores compiled): images/s and data_wait_frac after the first epoch, recompiles, and
#               every wait of the host for the GPU while it trains (benchmarks/sync_probe.py)
#   workers     the loader alone (benchmarks/loader.py self-test, 192 px), each run pinned to workers + 1 cores: 8
#               workers on the originals, 1 and 8 on the 256 copy (8: at most the cores less one); img/s per core,
#               and the cores one GPU needs at the fastest train.py rate at the recipe's settings and at the goal's
#               4,000 img/s; the CPU time of each step of a train sample on this CPU, for each copy (--profile)
#   validate    validate.py on train_recipe's export: its top-1 against the model card's
#   fsdp        FSDP2 on one process (accelerate_configs/fsdp.yaml, convnext_tiny): stop at a checkpoint, resume; a
#               step's seconds and each launch's one-time seconds, from the two launches' lengths and times
#               It and validate need the GPU and a few cores, workers no GPU: the three run at once, workers on the
#               cores its largest run is pinned to, validate on two of the others and fsdp on the rest
#   train_eager train_recipe's run at 224 px without --compile
# Every train.py stage says where its seconds went (seconds_split: start-up, training, evaluation, export,
# checkpoints, and the rest: the launcher and the exit).
# BENCHMARKS.md ("GPU check") says how to read the JSON. With --cpu every stage runs a tiny model on a tiny tree
# (throughput's bare loop on the CPU), so the script itself is tested in CI (tests/test_benchmarks.py).
# GPU_CHECK_FAIL_STAGE=NAME makes that stage fail at its start (how the tests check that the others still report).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
ACCELERATE=("$PY" -m accelerate.commands.launch)
OUT="$ROOT/benchmarks/results/gpu_check.json"
CPU=0
ALL_STAGES=(tree throughput train_8cores originals train_recipe workers validate fsdp train_eager)
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
[[ " ${STAGES[*]} " == *" tree "* ]] && STAGES+=(originals)  # the tree's originals, which the later stages read
ASKED=" ${STAGES[*]} "
STAGES=()  # in the run's order, whatever the order asked
for name in "${ALL_STAGES[@]}"; do [[ "$ASKED" == *" $name "* ]] && STAGES+=("$name"); done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/stages" "$(dirname "$OUT")"
# the machine, described once (the report written after every stage then needs no torch import: ~2 s each), and the
# check that there is a GPU
if ! "$PY" - "$WORK/machine.json" "$CPU" <<'PYEOF'
import json, os, platform, sys

import torch

if sys.argv[2] == "0" and not torch.cuda.is_available():
    sys.exit(1)
cpuinfo = open("/proc/cpuinfo").read().splitlines() if os.path.exists("/proc/cpuinfo") else []
machine = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cpu_model": next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                             None),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # the SIMD torch's CPU kernels run
with open(sys.argv[1], "w") as f:
    json.dump(machine, f)
PYEOF
then
  echo "error: no CUDA GPU visible to $PY; run on a GPU machine, or add --cpu for the dry run" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# one Inductor cache for this run, whatever the environment names (a process that has imported Inductor exports its
# default, /tmp/torchinductor_<user>, to its children): train_8cores compiles cold, as on a fresh machine, and
# train_recipe (the same graphs: model, batch, sizes, bf16) loads what it compiled instead of compiling again
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
COUNT_CORES=("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")  # the cores this process may run on
CORES="$("${COUNT_CORES[@]}")"
# the goal train_8cores answers (BENCHMARKS.md, "GPU check"): img/s of one GPU, the share of time it waits on data,
# the cores the whole launch may use (its DataLoader workers are the cores less one, for the main process)
GOAL_IMG_S=4000; GOAL_WAIT_FRAC=0.05; GOAL_CORES=8
GOAL_PIN=$GOAL_CORES  # the cores train_8cores is pinned to (the dry run: fewer)
SHORT_SIDE=256  # px: preprocess.py --shorter_side of the copy README.md recommends when the cores per GPU are few

if [ "$CPU" = 1 ]; then
  # tiny everything: the point is that each stage runs and the JSON has its shape
  TREE=(--num_classes 4 --train_per_class 16 --val_per_class 4 --long_side 96)
  TRAIN=(--model blocknet_tiny --batch_size 8 --epochs 2)
  GOAL_EPOCHS=3  # 8 steps each on the tiny tree
  # --compile as on the GPU (Inductor on the CPU), so the dry run shows train_recipe loading train_8cores' graphs
  EAGER_SIZE=32; RECIPE_SIZE=32; RECIPE_EVAL=32; RECIPE_COMPILE=(--compile)
  FSDP=(--model blocknet_tiny --image_size 32 --batch_size 4)
  FSDP_STEPS=(2 5)  # launches of 2 and 3 steps
  PRECISION=(--config_file "$ROOT/accelerate_configs/cpu.yaml")
  # one worker, sharing its core with the loader's main process: a 2-core box keeps a core for validate and fsdp
  # beside it, as a GPU machine does
  SWEEP=(1); SWEEP_256=(1); SWEEP_MAIN=0; SWEEP_IMAGES=32; VAL_BATCH=8
  GOAL_PIN=1  # and train_8cores on one core, with its worker: the originals' preprocess beside it gets the other
  THROUGHPUT=(--model blocknet_tiny --batch_size 16 --steps 3); THROUGHPUT_SIZES=(48 32); RECIPE_BATCH=8
else
  # 10 classes x 640 = 6,400 train images: resnet50 at batch 128 takes 50 steps an epoch, 3 epochs = 150 steps
  TREE=(--num_classes 10 --train_per_class 640 --val_per_class 20 --long_side 500 --grain 32)
  TRAIN=(--model resnet50 --batch_size 128 --epochs 3)
  # the 4 epochs after the first are 25,600 images (6.4 s at the goal's 4,000 img/s); the wait for each epoch's
  # first batch (the workers' queues refilling) is reported apart (first_batch_s), and the goal is judged without it
  GOAL_EPOCHS=5
  EAGER_SIZE=224; RECIPE_SIZE=192; RECIPE_EVAL=224; RECIPE_COMPILE=(--compile)
  FSDP=(--model convnext_tiny --image_size 224 --batch_size 64)
  # launches of 5 and 15 steps: their two times give a step's seconds apart from a launch's one-time costs (CUDA and
  # cuDNN set-up, the first steps), which two launches of equal length cannot separate
  FSDP_STEPS=(5 20)
  PRECISION=(--config_file "$ROOT/accelerate_configs/single_gpu.yaml")
  SWEEP=(8); SWEEP_256=(1 8); SWEEP_MAIN=1; SWEEP_IMAGES=1000; VAL_BATCH=256  # SWEEP_MAIN: the main process's core
  THROUGHPUT=(--model resnet50 --batch_size 256 --steps 50 --bf16); THROUGHPUT_SIZES=(224 192)  # 224 and the recipe's
  RECIPE_BATCH=128  # TRAIN's batch: the bare loop at it too, train.py's like-for-like ceiling
fi
COMMON=(--warmup_epochs 1 --log_every_steps 25 --lr 0.1)
LOGS="${OUT%.json}_logs.tar.gz"
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
  # written whole (temp file, rename): a stage running beside another reads every finished stage's file;
  # started_s: seconds into the run, which shows the stages that ran side by side
  echo "{\"status\": $status, \"seconds\": $((SECONDS - started)), \"started_s\": $((started - START))}" \
    > "$WORK/stages/.$name.tmp"
  mv "$WORK/stages/.$name.tmp" "$WORK/stages/$name.json"
  [ "$status" = 0 ] || { echo "   $name failed (status $status); the end of its log:" >&2; tail -n 15 "$WORK/$name.log" >&2; }
  logs
  report
}
logs() {  # every stage's log so far, to $LOGS (atomically; tar's status 1: a log still being written, kept as read)
  local tmp="$LOGS.$BASHPID.tmp"
  tar -czf "$tmp" -C "$WORK" $(cd "$WORK" && ls ./*.log) 2> /dev/null
  if [ $? -le 1 ]; then mv "$tmp" "$LOGS"; else rm -f "$tmp"; fi
}

# preprocess.py's shards of 100 images, not its default 1,000 (sized for ImageNet's 1.28 M files): the tree's 6,600 make
# 66 shards, several for each process, where 1,000 would make 8 and leave the other processes idle
stage_tree() {  # on TREE_CPUS with a process each; tree_launch.json: its cores and each step's seconds
  local procs started generate
  procs="$(pinned "$TREE_CPUS" "${COUNT_CORES[@]}")" || return 1
  started=$SECONDS
  pinned "$TREE_CPUS" "$PY" -m imagenet_trainer.demo --layout folders --output "$WORK/tree" --num_proc "$procs" \
    "${TREE[@]}" || return 1
  generate=$((SECONDS - started)); started=$SECONDS
  pinned "$TREE_CPUS" "$PY" "$ROOT/preprocess.py" --data_dir "$WORK/tree" --output_dir "$WORK/ds$SHORT_SIDE" \
    --num_proc "$procs" --shorter_side "$SHORT_SIDE" --shard_size 100 || return 1
  echo "{\"cpus\": \"$TREE_CPUS\", \"num_proc\": $procs, \"step_seconds\": {\"generate\": $generate, \
\"preprocess_$SHORT_SIDE\": $((SECONDS - started))}}" > "$WORK/tree_launch.json"
}
stage_originals() {  # on ORIGINALS_CPUS with a process each
  local procs
  procs="$(pinned "$ORIGINALS_CPUS" "${COUNT_CORES[@]}")" || return 1
  echo "{\"cpus\": \"$ORIGINALS_CPUS\", \"num_proc\": $procs, \
\"beside_train_8cores\": $([ -n "$BESIDE_8CORES" ] && echo true || echo false)}" > "$WORK/originals_launch.json"
  pinned "$ORIGINALS_CPUS" "$PY" "$ROOT/preprocess.py" --data_dir "$WORK/tree" --output_dir "$WORK/ds" \
    --num_proc "$procs" --shard_size 100
}

stage_throughput() {  # on THROUGHPUT_CPUS: the loop's host side needs one core
  local size
  echo "{\"cpus\": \"$THROUGHPUT_CPUS\", \"beside_tree\": $([ -n "$BESIDE_TREE" ] && echo true || echo false)}" \
    > "$WORK/throughput_launch.json"
  for size in "${THROUGHPUT_SIZES[@]}"; do
    pinned "$THROUGHPUT_CPUS" "$PY" "$ROOT/benchmarks/train_loop.py" --synthetic_only "${THROUGHPUT[@]}" \
      --image_size "$size" --output "$WORK/throughput_$size.json" || return 1
  done
  # the recipe's size at train.py's batch (later flags win): what train_8cores and train_recipe compare with
  pinned "$THROUGHPUT_CPUS" "$PY" "$ROOT/benchmarks/train_loop.py" --synthetic_only "${THROUGHPUT[@]}" \
    --image_size "$RECIPE_SIZE" --batch_size "$RECIPE_BATCH" \
    --output "$WORK/throughput_${RECIPE_SIZE}_b$RECIPE_BATCH.json"
}

# train_run OUTPUT_NAME DATASET CPUS IMAGE_SIZE EVAL_SIZE [more flags]: the launch on those cores (later flags win);
# OUTPUT_NAME_launch.json records the cores it had (counted inside the pinning) and the graphs Inductor compiled
# rather than loaded from this run's cache. A caller's PROBE array (a wrapper and its flags) goes before train.py.
train_run() {
  local name="$1" data="$2" cpus="$3" size="$4" eval_size="$5" cores cached; shift 5
  cores="$(pinned "$cpus" "${COUNT_CORES[@]}")" || return 1
  cached="$(fx_graphs)"
  TORCH_LOGS=recompiles pinned "$cpus" "${ACCELERATE[@]}" "${PRECISION[@]}" ${PROBE[@]+"${PROBE[@]}"} \
    "$ROOT/train.py" --dataset "$WORK/$data" --output_dir "$WORK/$name" "${TRAIN[@]}" --image_size "$size" \
    --eval_image_size "$eval_size" "${COMMON[@]}" --num_workers $((cores > 1 ? cores - 1 : 1)) "$@" || return 1
  echo "{\"cpus\": \"$cpus\", \"cores\": $cores, \"graphs_compiled\": $(($(fx_graphs) - cached))}" \
    > "$WORK/${name}_launch.json"
}
stage_train_8cores() {  # GOAL_PIN cores (all, where fewer), one for the main process and the rest workers
  train_run train_8cores "ds$SHORT_SIDE" "$(first_cores "$GOAL_PIN")" "$RECIPE_SIZE" "$RECIPE_EVAL" \
    "${RECIPE_COMPILE[@]}" --epochs "$GOAL_EPOCHS"
}
stage_train_recipe() {  # through benchmarks/sync_probe.py: the host's waits for the device, counted
  local PROBE=("$ROOT/benchmarks/sync_probe.py" --out_dir "$WORK/train_recipe_syncs")
  train_run train_recipe ds "$(first_cores "$CORES")" "$RECIPE_SIZE" "$RECIPE_EVAL" "${RECIPE_COMPILE[@]}"
}
stage_train_eager() { train_run train_eager ds "$(first_cores "$CORES")" "$EAGER_SIZE" "$EAGER_SIZE"; }
fx_graphs() {  # the graphs in Inductor's FX graph cache: one more for each graph compiled rather than loaded
  find "$TORCHINDUCTOR_CACHE_DIR/fxgraph" -type f 2> /dev/null | wc -l
}

pinned() {  # pinned CPUS COMMAND...: run COMMAND on those cores only (unpinned where taskset is missing)
  if command -v taskset > /dev/null; then taskset -c "$@"; else shift; "$@"; fi
}
first_cores() {  # first_cores N: the first N cores this script may use (all, where fewer), as a taskset list
  "$PY" -c "import os, sys; print(','.join(map(str, sorted(os.sched_getaffinity(0))[:int(sys.argv[1])])))" "$1"
}
last_cores() {  # last_cores N: the last N cores this script may use, as a taskset list
  "$PY" -c "import os, sys; print(','.join(map(str, sorted(os.sched_getaffinity(0))[-int(sys.argv[1]):])))" "$1"
}
split_side() {  # split_side CPUS: validate's cores, then fsdp's (a line each): the last 2 and the rest, if 3 or more
  local c v f
  IFS=, read -r -a c <<< "$1"
  if [ ${#c[@]} -lt 3 ]; then printf '%s\n' "$1" "$1"; return; fi
  v="${c[*]: -2}"; f="${c[*]:0:${#c[@]}-2}"
  printf '%s\n' "${v// /,}" "${f// /,}"
}
workers_on() {  # workers_on CPUS: DataLoader workers for a launch on those cores (one stays with the main process)
  local n
  n="$(pinned "$1" "${COUNT_CORES[@]}")"
  echo $((n > 1 ? n - 1 : 1))
}
points() {  # points N...: the sweep's worker counts on this machine, each at most its cores less SWEEP_MAIN, once
  local n seen=" "
  for n in "$@"; do
    n=$((n + SWEEP_MAIN <= CORES ? n : CORES - SWEEP_MAIN))
    if [ "$n" -ge 1 ] && [[ "$seen" != *" $n "* ]]; then seen+="$n "; echo "$n"; fi
  done
}
sweep_cores() {  # the cores of the sweep's largest point on this machine: all the workers stage uses
  local n most=0
  for n in $(points "${SWEEP[@]}" "${SWEEP_256[@]}"); do most=$((n + SWEEP_MAIN > most ? n + SWEEP_MAIN : most)); done
  echo "$most"
}
stage_workers() {
  local n feed
  echo "{\"cpus\": \"$(first_cores "$SWEEP_CORES")\", \"beside\": \"${BESIDE_WORKERS[*]}\"}" \
    > "$WORK/workers_launch.json"
  feed="$("$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
# the rate the GPU trains at, what the loader has to keep up with: the fastest steady rate at the recipe's settings
for runs in (("train_recipe", "train_8cores"), ("train_eager",)):
    tables = [Path(sys.argv[1], run, "metrics.jsonl") for run in runs]
    rates = [json.loads(line)["images_per_sec_steady"] for t in tables if t.is_file()
             for line in t.read_text().splitlines()]
    if rates:
        print(round(max(rates), 1))
        break
else:
    print(2800.0)
PYEOF
)"
  local profile=--profile  # each copy's first point (fewest workers) profiles a sample after its timed passes
  for n in $(points "${SWEEP[@]}"); do sweep_point ds "workers_$n" "$n" "$feed" $profile || return 1; profile=; done
  profile=--profile
  for n in $(points "${SWEEP_256[@]}"); do
    sweep_point "ds$SHORT_SIDE" "workers${SHORT_SIDE}_$n" "$n" "$feed" $profile || return 1
    profile=
  done
}
sweep_point() {  # sweep_point DATASET OUTPUT_NAME WORKERS FEED_IMG_S [--profile]: the loader alone on WORKERS +
  # SWEEP_MAIN cores
  pinned "$(first_cores $(($3 + SWEEP_MAIN)))" "$PY" "$ROOT/benchmarks/loader.py" --dataset "$WORK/$1" \
    --num_workers "$3" --image_size "$RECIPE_SIZE" --num_images "$SWEEP_IMAGES" --repeats 2 --train_only \
    --feed_img_s "$4" --output "$WORK/$2.json" "${@:5}"
}

side_launch() {  # side_launch NAME CPUS: the cores validate or fsdp has, and whether workers ran beside it
  echo "{\"cpus\": \"$2\", \"beside_workers\": $([ ${#BESIDE_WORKERS[@]} -gt 0 ] && echo true || echo false)}" \
    > "$WORK/${1}_launch.json"
}
fsdp() {
  pinned "$FSDP_CPUS" "${ACCELERATE[@]}" --config_file "$ROOT/accelerate_configs/fsdp.yaml" --num_processes 1 \
    $([ "$CPU" = 1 ] && echo --mixed_precision no) "$ROOT/train.py" --dataset "$WORK/ds" \
    --output_dir "$WORK/fsdp" --ema_decay 0 --epochs 100 --save_every_steps "${FSDP_STEPS[0]}" "${FSDP[@]}" \
    --num_workers "$(workers_on "$FSDP_CPUS")" "${COMMON[@]}" "$@"
}
stage_fsdp() {
  side_launch fsdp "$FSDP_CPUS"
  fsdp --max_train_steps "${FSDP_STEPS[0]}" &&
  fsdp --max_train_steps "${FSDP_STEPS[1]}" --resume_from_checkpoint latest
}

stage_validate() {
  side_launch validate "$VALIDATE_CPUS"
  pinned "$VALIDATE_CPUS" "${ACCELERATE[@]}" "${PRECISION[@]}" "$ROOT/validate.py" \
    --model "$WORK/train_recipe/final" --dataset "$WORK/ds" --batch_size "$VAL_BATCH" \
    --num_workers "$(workers_on "$VALIDATE_CPUS")" --output "$WORK/validate.json"
}

# report: every stage's figures that exist so far, to $OUT (atomically)
report() {
  "$PY" - "$WORK" "$OUT" "$CPU" "$((SECONDS - START))" "$SHORT_SIDE" "$GOAL_IMG_S" "$GOAL_WAIT_FRAC" "$GOAL_CORES" \
    "${STAGES[*]}" <<'PYEOF'
import json, os, re, sys
from pathlib import Path

import yaml

work, out, cpu, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
short_side, goal = int(sys.argv[5]), dict(zip(("img_s", "wait_frac", "cores"), map(float, sys.argv[6:9])))
asked = sys.argv[9].split()


def rows(run):
    return [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]


def mean(values):
    return round(sum(values) / len(values), 3)


def split(table, info):
    """Where a train.py launch's seconds went: from train.py's start to its first step, then its epochs' training,
    evaluation, export and checkpoints (the loop adds `other`: what is left of the stage, mostly the launcher's
    start and the exit)."""
    return {"startup": info["startup_s"],
            **{part: round(sum(r[f"{part}_s"] for r in table), 2)
               for part in ("train", "eval", "export", "checkpoint")}}


def train_py(run):
    table, cfg = rows(run), yaml.safe_load((work / run / "config.yaml").read_text())
    info = json.loads((work / run / "run_info.json").read_text())
    steady = table[1:] or table  # the first epoch holds cuDNN autotuning, compilation and the workers' start
    log = (work / f"{run}.log").read_text()
    launch = json.loads((work / f"{run}_launch.json").read_text())
    return {**{k: cfg[k] for k in ("model", "batch_size", "image_size", "eval_image_size", "num_workers", "compile")},
            "cpus": launch["cpus"], "cores": launch["cores"], "graphs_compiled": launch["graphs_compiled"],
            "mixed_precision": info["mixed_precision"], "steps": table[-1]["step"],
            "images_per_sec": round(mean([r["images_per_sec"] for r in steady]), 1),
            "first_epoch_images_per_sec": round(table[0]["images_per_sec"], 1),
            # after each epoch's first batch, as the steady wait
            "images_per_sec_steady": round(mean([r["images_per_sec_steady"] for r in steady]), 1),
            "data_wait_frac": mean([r["data_wait_frac"] for r in steady]),
            # the share after each epoch's first batch (worker refill), which short epochs weigh far more than
            # ImageNet's do: what says whether the loader keeps up
            "data_wait_steady_frac": mean([r["data_wait_steady_frac"] for r in steady]),
            "first_batch_s": mean([r["first_batch_s"] for r in steady]),
            "recompiles": len(re.findall(r"Recompiling function", log)),
            "cudnn_benchmark": info["cudnn_benchmark"], "tf32_matmul": info["tf32_matmul"],
            "val_top1": table[-1]["val_top1"], "first_epoch_train_s": round(table[0]["train_s"], 2),
            "seconds_split": split(table, info), "startup_split_s": info["startup_split_s"],
            "worker_server_started_s": info["worker_server_started_s"],
            **syncs(run, cfg["log_every_steps"])}


def syncs(run, log_every):
    """benchmarks/sync_probe.py's counts (rank 0) of a run launched through it, or {}: the epochs after the first
    (whose first step may compile), against train.py's budget of one wait a log interval and one an epoch's end."""
    path = work / f"{run}_syncs" / "rank0.json"
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


def train_8cores():
    run, table = train_py("train_8cores"), rows("train_8cores")
    met = (run["images_per_sec_steady"] >= goal["img_s"] and run["data_wait_steady_frac"] < goal["wait_frac"]
           and run["cores"] <= goal["cores"])
    return {**run, "dataset": f"preprocess.py --shorter_side {short_side}", "workers": run["num_workers"],
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
            "goal_met": None if cpu else met}


def throughput():
    runs = []
    for path in sorted(work.glob("throughput_*.json")):
        if path.name == "throughput_launch.json":
            continue
        r = json.loads(path.read_text())  # benchmarks/train_loop.py's output
        runs.append({"model": r["config"]["model"], "image_size": r["config"]["image_size"],
                     "compile": r["config"]["compile"], "img_s": round(r["bare_img_s"], 1),
                     "batch_size": r["config"]["batch_size"], "bf16": r["config"]["bf16"], "channels_last": True})
    return {**json.loads((work / "throughput_launch.json").read_text()), "runs": runs}


def sweep(prefix):
    """(the loader.py self-test reports of one copy, fewest workers first; its points)."""
    points = [p for p in work.glob(f"{prefix}_*.json") if p.stem.split("_")[-1].isdigit()]  # not _launch.json
    runs = [json.loads(p.read_text()) for p in sorted(points, key=lambda p: int(p.stem.split("_")[-1]))]
    return runs, [{"workers": s["config"]["num_workers"], "img_s": s["pipelines"]["train"]["ours_img_s"],
                   "img_s_per_worker": s["pipelines"]["train"]["img_s_per_core"]} for s in runs]


def cores_for(img_s, points):
    # that rate over the per-worker rate of the largest run (the most pessimistic: per-worker rates fall as workers
    # share caches and memory bandwidth), plus one core for the main process
    return None if not points else round(img_s / points[-1]["img_s_per_worker"] + 1, 1)


def workers():
    runs, points = sweep("workers")
    small_runs, small = sweep(f"workers{short_side}")
    feed = runs[0]["feed_img_s"]
    launch = json.loads((work / "workers_launch.json").read_text())
    return {"cpus": launch["cpus"], "beside": launch["beside"].split(),
            "image_size": runs[0]["config"]["image_size"], "feed_img_s": feed, "goal_img_s": goal["img_s"],
            "sweep": points, "cores_per_gpu": cores_for(feed, points),
            "cores_at_goal": cores_for(goal["img_s"], points),
            f"sweep_{short_side}": small, f"cores_per_gpu_{short_side}": cores_for(feed, small),
            f"cores_at_goal_{short_side}": cores_for(goal["img_s"], small),
            # CPU us a train sample spends in each step, on each copy (its first point's --profile)
            "train_profile_us": {copy: profile(runs_of_copy) for copy, runs_of_copy in
                                 (("originals", runs), (str(short_side), small_runs)) if runs_of_copy}}


def profile(runs):
    return next(iter(runs[0].get("train_profile_us", {}).values()), None)


def fsdp():
    table = rows("fsdp")
    info = json.loads((work / "fsdp" / "run_info.json").read_text())
    resumed = re.search(r"resumed from \S+ at epoch \d+, step (\d+)", (work / "fsdp.log").read_text())
    resumes = sorted((work / "fsdp" / "resumes").glob("*/run_info.json"))
    launches = [info, *(json.loads(p.read_text()) for p in resumes)]
    # each launch's steps and its training seconds after its first batch came (the workers' start left out)
    runs = [{"steps": row["step"] - before, "train_s": round(row["train_s"], 2),
             "first_batch_s": round(row["first_batch_s"], 2), "computing_s": row["train_s"] - row["first_batch_s"]}
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


def validate():
    card = re.search(r"^\|[^|]+\| validation \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$",
                     (work / "train_recipe" / "final" / "README.md").read_text(), re.M)
    val = json.loads((work / "validate.json").read_text())
    return {**json.loads((work / "validate_launch.json").read_text()), "top1": val["top1"], "top5": val["top5"],
            "n": val["n"], "images_per_sec": round(val["images_per_sec"], 1),
            "card_top1": float(card.group(2)) if card else None,
            "matches_card": bool(card) and float(card.group(2)) == round(val["top1"], 2)}


def tree():
    small = json.loads((work / f"ds{short_side}" / "preprocess_report.json").read_text())
    images = sum(small["counts"].values())
    return {**json.loads((work / "tree_launch.json").read_text()),
            "images": small["counts"], "mean_kb": round(small["bytes_in"] / 1024 / max(1, images), 1),
            f"shorter_side_{short_side}": {
                "images": small["counts"], "skipped": len(small["skipped"]), "tiled": small["tiled"],
                "mean_kb_stored": round(small["bytes_out"] / 1024 / max(1, images), 1),
                "preprocess_seconds": small["seconds"], "preprocess_img_s": rate(images, small["seconds"])}}


def originals():
    report = json.loads((work / "ds" / "preprocess_report.json").read_text())
    images = sum(report["counts"].values())
    return {**json.loads((work / "originals_launch.json").read_text()),
            "images": report["counts"], "skipped": len(report["skipped"]), "tiled": report["tiled"],
            "preprocess_seconds": report["seconds"], "preprocess_img_s": rate(images, report["seconds"])}


def rate(images, seconds):  # preprocess_report.json's seconds are rounded to the ms
    return round(images / seconds, 1) if seconds else None


readers = {"tree": tree, "throughput": throughput, "train_8cores": train_8cores, "originals": originals,
           "train_recipe": lambda: train_py("train_recipe"), "workers": workers, "validate": validate, "fsdp": fsdp,
           "train_eager": lambda: train_py("train_eager")}
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
    if "seconds_split" in stage:
        stage["seconds_split"]["other"] = round(stage["seconds"] - sum(stage["seconds_split"].values()), 2)
    if stage["status"] != 0:
        stage["log_tail"] = (work / f"{name}.log").read_text().splitlines()[-15:]
    stages[name] = stage
originals, goal_run = stages.get("originals", {}), stages.get("train_8cores", {})
if originals.get("beside_train_8cores") and "per_epoch" in goal_run:
    # whether the preprocess beside train_8cores ended before the epochs the goal is judged on began, in seconds into
    # the run: its end at the latest (whole seconds, rounded down), their start at the earliest (the launcher's own
    # start left out)
    first = rows("train_8cores")[0]
    epochs_from = goal_run["started_s"] + goal_run["seconds_split"]["startup"] + sum(
        first[f"{part}_s"] for part in ("train", "eval", "export", "checkpoint"))
    originals["ended_by_s"] = originals["started_s"] + originals["seconds"] + 1
    originals["goal_epochs_from_s"] = round(epochs_from, 1)
    originals["done_before_goal_epochs"] = originals["ended_by_s"] <= epochs_from
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
PYEOF
}

# Stages that need the GPU and few cores run beside one that needs cores and no GPU, each on cores of its own, when
# both are asked for and the cores allow: throughput beside tree (on the last core, tree on the others), and
# validate and fsdp beside workers (on the cores past workers' largest run: validate, 200 images, on two of them and
# fsdp on the rest, or both on all of them where they are fewer than 3), so that none of them costs time; and the
# originals' preprocess (cores, no GPU) beside train_8cores (8 cores and the GPU)
asked() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }
ALL_CPUS="$(first_cores "$CORES")"  # each stage's cores where it runs alone
TREE_CPUS="$ALL_CPUS"; THROUGHPUT_CPUS="$ALL_CPUS"; VALIDATE_CPUS="$ALL_CPUS"; FSDP_CPUS="$ALL_CPUS"; BESIDE_TREE=""
ORIGINALS_CPUS="$ALL_CPUS"; BESIDE_8CORES=""; BESIDE_WORKERS=()
if asked tree && asked throughput && [ "$CORES" -gt 1 ]; then
  TREE_CPUS="$(first_cores $((CORES - 1)))"; THROUGHPUT_CPUS="$(last_cores 1)"; BESIDE_TREE=throughput
fi
originals_fit_beside() {  # the cores past train_8cores' are at least half as many as its own: fewer would make the
  # originals' preprocess outlast the launch (one after the other is then the shorter)
  [ "$CORES" -gt "$GOAL_PIN" ] && [ $((2 * (CORES - GOAL_PIN))) -ge "$GOAL_PIN" ]
}
if asked train_8cores && asked originals && originals_fit_beside; then
  ORIGINALS_CPUS="$(last_cores $((CORES - GOAL_PIN)))"; BESIDE_8CORES=originals
fi
SWEEP_CORES="$(sweep_cores)"
if asked workers && [ "$SWEEP_CORES" -gt 0 ] && [ "$CORES" -gt "$SWEEP_CORES" ]; then
  VALIDATE_CPUS="$(last_cores $((CORES - SWEEP_CORES)))"; FSDP_CPUS="$VALIDATE_CPUS"
  for name in validate fsdp; do asked "$name" && BESIDE_WORKERS+=("$name"); done
  if [ ${#BESIDE_WORKERS[@]} = 2 ]; then
    { read -r VALIDATE_CPUS; read -r FSDP_CPUS; } <<< "$(split_side "$VALIDATE_CPUS")"
  fi
fi

run_beside() {  # run_beside NAME SIDE...: stage NAME, and beside it the SIDE stages, all at once
  local main="$1" side pids=(); shift
  for side in "$@"; do run_stage "$side" "stage_$side" & pids+=($!); done
  run_stage "$main" "stage_$main"
  wait "${pids[@]}"
  report  # every stage's figures, whichever finished last
}
for name in "${STAGES[@]}"; do
  if [[ " $BESIDE_TREE $BESIDE_8CORES ${BESIDE_WORKERS[*]} " == *" $name "* ]]; then
    continue  # runs beside tree, train_8cores or workers
  elif [ "$name" = tree ] && [ -n "$BESIDE_TREE" ]; then
    run_beside tree throughput
  elif [ "$name" = train_8cores ] && [ -n "$BESIDE_8CORES" ]; then
    run_beside train_8cores originals
  elif [ "$name" = workers ] && [ ${#BESIDE_WORKERS[@]} -gt 0 ]; then
    run_beside workers "${BESIDE_WORKERS[@]}"
  else
    run_stage "$name" "stage_$name"
  fi
done
echo "== done in $((SECONDS - START)) s: $OUT" >&2
cat "$OUT"
"$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['stages']; sys.exit(any(v['status'] != 0 for v in s.values()))" "$OUT"
