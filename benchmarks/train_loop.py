"""Loop overhead: train.py's compute time per step vs a bare PyTorch loop, same model, batch, size and device (the CPU).

    python benchmarks/train_loop.py [--model resnet18] [--batch_size 32] [--image_size 112] [--steps 30] \
        [--output F.json]

train.py runs for real (accelerate launch, its own data path, one process, no DataLoader workers so the time spent
producing batches is measured in-thread and excluded via its own `data_wait_frac`). The bare loop is the nanoGPT-style
minimum: resident uint8 batch -> normalize -> forward -> cross-entropy -> backward -> SGD step. Target: ratio <= 1.05.
train.py's side launches on the CPU (accelerate_configs/cpu.yaml), so where CUDA is visible the comparison is refused:
add --synthetic_only to measure the accelerator's ceiling (bf16 autocast, channels_last, optional --compile) without
any loader, or hide the GPU (CUDA_VISIBLE_DEVICES=) to compare the two loops on the CPU.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modeling  # noqa: E402
from imagenet_trainer.config import parse_config  # noqa: E402
from imagenet_trainer.demo import make_ilsvrc_tree  # noqa: E402


@dataclass
class BenchConfig:
    model: str = "resnet18"  # any modeling.create_model name
    batch_size: int = 32  # images per step
    image_size: int = 112  # px; small so a CPU run takes a minute
    steps: int = 30  # measured optimizer steps (after 3 warm-up steps)
    synthetic_only: bool = False  # only the bare loop: the device's ceiling (use on a GPU box)
    bf16: bool = False  # bare loop under bf16 autocast (GPU)
    compile: bool = False  # bare loop with torch.compile
    output: str = ""  # JSON results path


def bare_loop(cfg: BenchConfig, num_classes: int) -> float:
    """Images/s of the minimal loop on resident data."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # the backends train.py sets (set_backends): a ceiling it could reach, no lower
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    model = modeling.create_model(cfg.model, num_classes=num_classes).to(device, memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x8 = torch.randint(0, 256, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32

    def step():
        x = ((x8.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=cfg.bf16):
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return cfg.steps * cfg.batch_size / (time.perf_counter() - start)


def train_py(cfg: BenchConfig, work: Path) -> tuple[float, dict]:
    """Compute-only images/s of a real train.py run (its data wait subtracted), from its metrics.jsonl."""
    # one epoch of exactly `steps` optimizer steps over 4 classes
    tree = make_ilsvrc_tree(work / "tree", source="photos", num_classes=4,
                            train_per_class=cfg.batch_size * cfg.steps // 4, val_per_class=2, num_test=1)
    subprocess.run([sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir",
                    str(work / "ds"), "--num_proc", "2"], check=True, capture_output=True)
    run = work / "run"
    # accelerate's CPU launcher sets OMP_NUM_THREADS=1 when it counts one physical core: give it the bare loop's threads
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu.yaml"), "--num_cpu_threads_per_process", str(torch.get_num_threads()),
           str(ROOT / "train.py"), "--model", cfg.model, "--dataset",
           str(work / "ds"), "--output_dir", str(run), "--batch_size", str(cfg.batch_size), "--image_size",
           str(cfg.image_size), "--num_workers", "0", "--warmup_epochs", "0", "--epochs", "1", "--lr", "0.01"]
    subprocess.run(cmd, check=True, capture_output=True)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # images/s over the epoch's wall time, with the share spent producing batches taken out
    return row["images_per_sec"] / max(1e-9, 1 - row["data_wait_frac"]), row


def main(argv=None):
    cfg = parse_config(BenchConfig, argv, description=__doc__.split("\n")[0])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not cfg.synthetic_only:  # the bare loop would run on the GPU, train.py on the CPU
        raise SystemExit("error: train.py's side runs on the CPU: on a GPU machine add --synthetic_only (the GPU's "
                         "ceiling), or hide the GPU (CUDA_VISIBLE_DEVICES=) to compare the two loops on the CPU")
    torch.manual_seed(0)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"
    if device == "cuda":
        machine += f" ({torch.cuda.get_device_name()})"
    bare = bare_loop(cfg, num_classes=4)
    results = {"config": asdict(cfg), "machine": machine}
    if not cfg.synthetic_only:
        with tempfile.TemporaryDirectory() as tmp:
            ours, row = train_py(cfg, Path(tmp))
        bare = (bare + bare_loop(cfg, num_classes=4)) / 2  # before and after: other jobs may share the machine
        results.update({"train_py_compute_img_s": ours, "overhead_ratio": bare / ours, "train_py_last_row": row})
    results["bare_img_s"] = bare
    print(f"| loop | img/s | ratio (bare / loop) |\n|---|---|---|\n| bare PyTorch | {bare:.1f} | 1.00 |")
    if not cfg.synthetic_only:
        print(f"| train.py (compute only) | {ours:.1f} | {bare / ours:.3f} |")
    print(f"machine: {machine}")
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
