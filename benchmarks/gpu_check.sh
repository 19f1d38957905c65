#!/usr/bin/env bash
# The GPU paths end to end, in one short run (minutes on one H100/H200; the JSON has each stage's seconds).
#
#   bash benchmarks/gpu_check.sh [--out F.json]     # on a machine with one GPU (default out:
#                                                   # benchmarks/results/gpu_check.json)
#   bash benchmarks/gpu_check.sh --cpu [--out F.json]   # dry run: every stage tiny, on the CPU (default out:
#                                                   # benchmarks/results/gpu_check_cpu.json, so that a dry run never
#                                                   # replaces the GPU figures of gpu_check.json)
#   bash benchmarks/gpu_check.sh --stages tree,train_recipe,workers   # some stages only (tree: with originals)
#   bash benchmarks/gpu_check.sh --stage_limit_s 300   # each stage's time limit, s (default 240 on a GPU, about twice
#                                                   # the longest stage an H100 ran; 600 with --cpu; 0: none)
#   PYTHON=/opt/env/bin/python bash benchmarks/gpu_check.sh   # another interpreter (default: .venv's, else python3)
#   bash benchmarks/gpu_check.sh --help             # this text
#
# It runs from any directory (a relative --out or PYTHON is the caller's). Each run starts from an empty work folder:
# every stage but throughput reads the tree that tree makes in the same run, and validate train_recipe's export, so
# --stages without them is refused. A stop signal (SIGTERM, SIGINT, SIGHUP: a time limit's, Ctrl-C) stops the stage
# running, and waits for its processes (train.py holding the GPU among them), before the work folder is removed;
# the stage is recorded as stopped (its signal's status). Under an outer `timeout`, give it `-k 30` or more.
# A stage that outlasts --stage_limit_s is stopped as a signal stops it (SIGTERM to each of its processes, found by
# an environment marker even in a session of their own, as torchrun starts its ranks; SIGKILL to what is left 20 s
# later; accelerate's one-process launcher gives train.py 5 s) and recorded with status 124 and `time_limit_s`; the
# next stages still run: one stage that hangs does not cost the run.
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
#               images/s and the steady data wait of the 4 after the first (taken together: their images over their
#               seconds), and goal_met
#   originals   preprocess.py on the tree's originals, which the later stages train on; asked with tree. Beside
#               train_8cores, on the cores past its 8 where there are at least 4 of them: it ends during the cold
#               compile of train_8cores' first epoch, before the epochs the goal is judged on
#   train_recipe the recipe's settings on the originals, every core but one a DataLoader worker (its graphs loaded
#               from what train_8cores compiled): images/s and data_wait_frac after the first epoch, recompiles, and
#               every wait of the host for the GPU while it trains (benchmarks/sync_probe.py)
#   workers     the loader alone (benchmarks/loader.py self-test, 192 px), each run pinned to workers + 1 cores: 8
#               workers on the originals, 1 and 8 on the 256 copy (8: at most the cores less one); img/s per core,
#               and the cores one GPU needs at the fastest train.py rate at the recipe's settings (train_8cores' or
#               train_recipe's in the same run; not measured without them) and at the goal's 4,000 img/s; the CPU time
#               of each step of a train sample on this CPU, for each copy (--profile)
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
ALL_STAGES=(tree throughput train_8cores originals train_recipe workers validate fsdp train_eager)
USAGE="use --cpu, --out FILE.json, --stage_limit_s S, --stages A,B of: ${ALL_STAGES[*]}; --help"
fail() { echo "error: $*" >&2; exit 2; }  # one line, status 2: what to change before running again
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
OUT=""
CPU=0
STAGE_LIMIT_S=""
STAGES=("${ALL_STAGES[@]}")
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out|--stages|--stage_limit_s)
      # a missing value, or the next flag taken for one, would fail later and less clearly
      [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != -* ]] || fail "$1 needs a value ($USAGE)"
      case "$1" in
        --out) OUT="$2" ;;
        --stages) IFS=, read -r -a STAGES <<< "$2" ;;
        *) [[ "$2" =~ ^[0-9]+$ ]] || fail "--stage_limit_s needs whole seconds (0: no limit), not $2"
           STAGE_LIMIT_S=$((10#$2)) ;;
      esac
      shift ;;
    -h|--help) sed -n '2,/^set -uo pipefail$/{/^set -uo/d; s/^# \{0,1\}//; p;}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) fail "unknown argument $1 ($USAGE)" ;;
  esac
  shift
done
[ ${#STAGES[@]} -gt 0 ] || fail "--stages: no stage given (stages: ${ALL_STAGES[*]})"
for name in "${STAGES[@]}"; do
  [ -n "$name" ] || fail "--stages: an empty stage name (stages: ${ALL_STAGES[*]})"
  [[ " ${ALL_STAGES[*]} " == *" $name "* ]] || fail "--stages: unknown stage $name (stages: ${ALL_STAGES[*]})"
done
asked() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }
# s: about twice the longest stage one H100 ran (train_8cores, 126 s with its cold compile); the dry run's compiles
# on a loaded 2-core CPU take longer
[ -n "$STAGE_LIMIT_S" ] || STAGE_LIMIT_S=$([ "$CPU" = 1 ] && echo 600 || echo 240)
for name in "${STAGES[@]}"; do
  case "$name" in
    tree|throughput) ;;
    *) asked tree || fail "--stages: $name needs tree in the same run (each run starts from an empty work folder;" \
      "tree makes what $name reads): add tree" ;;
  esac
done
if asked validate && ! asked train_recipe; then
  fail "--stages: validate needs train_recipe in the same run (it scores that stage's export): add train_recipe"
fi
asked tree && STAGES+=(originals)  # the tree's originals, which the later stages read
ASKED=" ${STAGES[*]} "
STAGES=()  # in the run's order, whatever the order asked
for name in "${ALL_STAGES[@]}"; do [[ "$ASKED" == *" $name "* ]] && STAGES+=("$name"); done
# a dry run never writes where the GPU figures are kept
[ -n "$OUT" ] || OUT="$ROOT/benchmarks/results/gpu_check$([ "$CPU" = 1 ] && echo _cpu).json"
OUT="$(absolute "$OUT")"
if [ -n "${PYTHON:-}" ]; then  # a path, or a command on the PATH
  PY="$(command -v -- "$PYTHON")" && [ -f "$PY" ] && [ -x "$PY" ] ||
    fail "PYTHON=$PYTHON is not an executable file or a command (give the interpreter of this project's venv)"
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
elif [ -L "$ROOT/.venv/bin/python" ] || [ -e "$ROOT/.venv/bin/python" ]; then
  # a venv copied from another machine links to an interpreter that is not here: say so, not run another Python
  fail "$ROOT/.venv/bin/python does not run here (it links to $(readlink "$ROOT/.venv/bin/python" || echo '?'),"\
" missing on this machine): make the venv here (make install) or give PYTHON= an interpreter with requirements.txt"
else
  PY="$(command -v python3)" || fail "no $ROOT/.venv/bin/python and no python3 on the PATH: set PYTHON="
fi
PY="$(absolute "$PY")"
REPORT=("$PY" "$ROOT/benchmarks/gpu_check_report.py")
ACCELERATE=("$PY" -m accelerate.commands.launch)
WORK="$(absolute "$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")")" || fail "no work folder in ${TMPDIR:-/tmp}"
trap 'rm -rf "$WORK"' EXIT
export GPU_CHECK_WORK="$WORK"  # every stage process inherits it: found after its parent ended (reparented to init)
# stop_stages SIGNAL: signal every process under this script (the stages' accelerate, train.py and the rest), wait
# until they are gone (SIGKILL for what is left after STOP_GRACE_S), then exit, the EXIT trap removing the work
# folder: a scheduler's SIGTERM, a time limit or Ctrl-C must not end this script alone while a stage's accelerate and
# train.py run on, holding the GPU, in a folder removed under them. The stages run in the background with this shell
# in `wait` (run_stage), which a trapped signal interrupts at once.
STOP_GRACE_S=5
stop_stages() {
  local sig="$1"
  trap '' TERM INT HUP  # one stop at a time
  echo "== stopped by SIG$sig: ending the stages running, then removing $WORK" >&2
  ending "$STOP_GRACE_S" descendants "$$"
  # the stages it cut, with the signal's status, and their logs so far: the JSON tells them from those not reached
  local marker name status=$((128 + $(kill -l "$sig")))
  [ -n "${START:-}" ] || exit "$status"  # stopped before any stage started: nothing to record
  for marker in "$WORK"/stages/*.running; do
    [ -f "$marker" ] || continue
    name="$(basename "$marker" .running)"
    echo "{\"status\": $status, \"seconds\": $((SECONDS - $(cat "$marker"))), \"started_s\": $(($(cat "$marker") - START)), \
\"stopped_by\": \"SIG$sig\"}" > "$WORK/stages/$name.json"
    rm -f "$marker"
  done
  logs; report > /dev/null 2>&1
  exit "$status"
}
ending() {  # ending GRACE_S LOOKUP...: SIGTERM to the processes LOOKUP prints, then SIGKILL to those still running
  # GRACE_S later and to any LOOKUP finds then (the first round's kept: a process whose parent has ended is no longer
  # found under it)
  local grace="$1" pids=() more=() sig waited; shift
  for sig in TERM KILL; do
    mapfile -t more < <("$@")
    pids+=(${more[@]+"${more[@]}"})
    [ ${#pids[@]} -gt 0 ] || return 0
    kill "-$sig" "${pids[@]}" 2> /dev/null
    for ((waited = 0; waited < grace * 10; waited++)); do
      alive "${pids[@]}" || break
      sleep 0.1
    done
  done
}
descendants() {  # descendants PID [STAGE]: the processes under PID at any depth, less this lookup's own (/proc, else
  # ps: a container image may have no ps); with STAGE, the processes of that stage instead, wherever they are (/proc)
  "$PY" - "$1" "$WORK" ${2:+"$2"} <<'PYEOF'
import os, subprocess, sys

marker = f"GPU_CHECK_WORK={sys.argv[2]}".encode()
stage = f"GPU_CHECK_STAGE={sys.argv[3]}".encode() if len(sys.argv) > 3 else None

parents = {}
if os.path.isdir("/proc/self"):
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:  # reparented: still this run's
                environ = f.read().split(b"\0")
            if marker in environ and int(entry) not in (os.getpid(), int(sys.argv[1])):
                parents[int(entry)] = int(sys.argv[1])
                if stage in environ:
                    print(entry)
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
else:
    for line in subprocess.run(["ps", "-e", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout \
            .splitlines():
        pid, parent = map(int, line.split())
        parents[pid] = parent
if stage is not None:
    sys.exit()
under, frontier = set(), {int(sys.argv[1])}
while frontier:
    frontier = {pid for pid, parent in parents.items() if parent in frontier and pid != os.getpid()} - under
    under |= frontier
print(*sorted(under), sep="\n")
PYEOF
}
alive() {  # alive PID...: one of them still runs (an ended process not yet reaped does not)
  local pid stat
  for pid in "$@"; do
    if [ -d /proc/self ]; then
      { read -r stat < "/proc/$pid/stat"; } 2> /dev/null || continue  # ended
      stat="${stat##*) }"
      [ "${stat%% *}" = Z ] || return 0
    elif kill -0 "$pid" 2> /dev/null; then
      return 0
    fi
  done
  return 1
}
for sig in TERM INT HUP; do trap "stop_stages $sig" "$sig"; done
if [ -n "${PYTHONPATH:-}" ]; then  # the caller's relative entries, as the caller meant them, once in $ROOT
  IFS=: read -r -a entries <<< "$PYTHONPATH"
  PYTHONPATH=""
  for entry in "${entries[@]}"; do PYTHONPATH+="${PYTHONPATH:+:}$(absolute "${entry:-.}")"; done
  export PYTHONPATH
fi
cd "$ROOT" || fail "cannot enter $ROOT"  # python -m finds this project's package from any directory
mkdir -p "$WORK/stages" "$(dirname "$OUT")"
# one Inductor cache for this run, whatever the environment names (a process that has imported Inductor exports its
# default, /tmp/torchinductor_<user>, to its children): train_8cores compiles cold, as on a fresh machine, and
# train_recipe (the same graphs: model, batch, sizes, bf16) loads what it compiled instead of compiling again. Set
# before the machine check, whose imports would create the default one
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
# the machine, described once (the report written after every stage then needs no torch import: ~2 s each), and the
# check that there is a GPU
"$PY" - "$WORK/machine.json" "$CPU" 2> "$WORK/machine.err" <<'PYEOF'
import json, os, platform, sys

try:
    import torch
    # what every stage imports: missing, each would fail in seconds
    import accelerate, datasets, pyarrow, simplejpeg, timm, transformers, yaml
    try:  # preprocess.py's lossless tiling (the turbojpeg wheel's libturbojpeg, or the system's)
        from imagenet_trainer.tile_writer import turbojpeg_library
    except ModuleNotFoundError as e:  # the script copied without the package: its stages say so themselves
        if e.name != "imagenet_trainer":
            raise
    else:
        turbojpeg_library()
except (ImportError, RuntimeError) as e:  # RuntimeError: no TurboJPEG 3 library
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(3)
import warnings

with warnings.catch_warnings(record=True) as said:  # torch's reason, e.g. a driver too old for its CUDA
    warnings.simplefilter("always")
    cuda = torch.cuda.is_available()
if sys.argv[2] == "0" and not cuda:  # why, in one line
    why = [f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else
           f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees no GPU"]
    why += [" ".join(str(w.message).split())[:300] for w in said]
    print("; ".join(why), file=sys.stderr)
    sys.exit(4)
cpuinfo = open("/proc/cpuinfo").read().splitlines() if os.path.exists("/proc/cpuinfo") else []
machine = {"gpu": torch.cuda.get_device_name() if cuda else None,
           "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cpu_model": next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                             None),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # the SIMD torch's CPU kernels run
with open(sys.argv[1], "w") as f:
    json.dump(machine, f)
PYEOF
case $? in
  0) ;;
  3) fail "$PY cannot import what the stages need ($(tail -n 1 "$WORK/machine.err")): give PYTHON= this project's"\
" venv interpreter (make install)" ;;
  4) fail "no CUDA GPU visible to $PY ($(tail -n 1 "$WORK/machine.err")); run on a GPU machine, or add --cpu for"\
" the dry run" ;;
  *) fail "$PY could not describe the machine: $(tail -n 1 "$WORK/machine.err")" ;;
esac
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
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
  local name="$1" started=$SECONDS status=0 limited=""
  echo "== $name ($((SECONDS - START)) s)" >&2
  if [ "${GPU_CHECK_FAIL_STAGE:-}" = "$name" ]; then
    echo "failing on purpose: GPU_CHECK_FAIL_STAGE=$name" > "$WORK/$name.log"; status=1
  else
    echo "$started" > "$WORK/stages/$name.running"  # a stop signal records the stage it cut (stop_stages)
    # in the background, its processes marked (end_stage): a stop signal interrupts `wait` at once, and the polling
    # of the time limit within a second
    ( export GPU_CHECK_STAGE="$name"; "$2" ) > "$WORK/$name.log" 2>&1 < /dev/null &
    local pid=$!
    while [ "$STAGE_LIMIT_S" -gt 0 ] && alive "$pid" && [ $((SECONDS - started)) -lt "$STAGE_LIMIT_S" ]; do
      sleep 1
    done
    if [ "$STAGE_LIMIT_S" -gt 0 ] && alive "$pid"; then
      limited=", \"time_limit_s\": $STAGE_LIMIT_S"
      echo "stage $name stopped at its time limit, --stage_limit_s $STAGE_LIMIT_S" >> "$WORK/$name.log"
      end_stage "$name"
    fi
    wait "$pid" || status=$?
    end_stage "$name"  # what outlived it (a rank in a session of its own), as on the GPU the next stages need it
    rm -f "$WORK/stages/$name.running"
  fi
  [ -z "$limited" ] || status=124  # whatever status its cut processes left
  # written whole (temp file, rename): a stage running beside another reads every finished stage's file;
  # started_s: seconds into the run, which shows the stages that ran side by side
  echo "{\"status\": $status, \"seconds\": $((SECONDS - started)), \"started_s\": $((started - START))$limited}" \
    > "$WORK/stages/.$name.tmp"
  mv "$WORK/stages/.$name.tmp" "$WORK/stages/$name.json"
  logs
  report
  if [ "$status" != 0 ]; then
    echo "   $name failed (status $status); the end of its log:" >&2
    "${REPORT[@]}" --tail "$WORK/$name.log" >&2 || tail -n 15 "$WORK/$name.log" >&2
  fi
}
STAGE_GRACE_S=20  # s from SIGTERM to SIGKILL for a stage cut at its limit: a train.py's checkpoint
end_stage() { ending "$STAGE_GRACE_S" descendants "$$" "$1"; }  # end_stage NAME: every process of stage NAME left
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
  local n feed feed_source
  # the rate the GPU trained at in this run, what the loader has to keep up with: none where no train.py stage at
  # the recipe's settings ran before this one (loader.py then prints the cores for the goal's rate)
  read -r feed feed_source <<< "$("${REPORT[@]}" --feed "$WORK")"
  echo "{\"cpus\": \"$(first_cores "$SWEEP_CORES")\", \"beside\": \"${BESIDE_WORKERS[*]}\", \
\"feed_img_s\": ${feed:-null}, \"feed_source\": $([ -n "$feed_source" ] && echo "\"$feed_source\"" || echo null)}" \
    > "$WORK/workers_launch.json"
  feed="${feed:-$GOAL_IMG_S}"
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

# report: every stage's figures that exist so far, to $OUT (atomically; benchmarks/gpu_check_report.py)
report() {
  "${REPORT[@]}" "$WORK" "$OUT" "$CPU" "$((SECONDS - START))" "$SHORT_SIDE" "$GOAL_IMG_S" "$GOAL_WAIT_FRAC" \
    "$GOAL_CORES" "${STAGES[*]}"
}

# Stages that need the GPU and few cores run beside one that needs cores and no GPU, each on cores of its own, when
# both are asked for and the cores allow: throughput beside tree (on the last core, tree on the others), and
# validate and fsdp beside workers (on the cores past workers' largest run: validate, 200 images, on two of them and
# fsdp on the rest, or both on all of them where they are fewer than 3), so that none of them costs time; and the
# originals' preprocess (cores, no GPU) beside train_8cores (8 cores and the GPU)
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
report  # the machine and every stage pending, before any stage: a run killed in its first stage still says which
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
"$PY" -c "import json, sys; sys.exit(any(s['status'] != 0 for s in json.load(open(sys.argv[1]))['stages'].values()))" \
  "$OUT"
