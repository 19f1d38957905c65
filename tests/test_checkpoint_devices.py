"""A checkpoint train.py wrote on a CUDA machine resumes on a CPU-only one, bit for bit.

No GPU here, so the checkpoint is a CPU run's, rewritten into what accelerate's save_state writes on CUDA
(accelerate/checkpointing.py, save_accelerator_state). What differs, file by file:

- ``optimizer.bin`` (torch.save of the optimizer's state_dict): every tensor's storage is tagged ``cuda:0`` (the
  momentum buffers live on the device); a plain ``torch.load`` of it on a CPU-only machine raises.
- ``custom_checkpoint_*.pkl`` (train.py's TrainState, and the EMA model with --ema_decay): the same, for the EMA's
  weights and buffers.
- ``random_states_0.pkl``: one more key, ``torch_cuda_manual_seed``, the list ``torch.cuda.get_rng_state_all()``
  returns (one 16-byte uint8 CPU tensor per visible GPU: Philox seed and offset).
- ``model.safetensors``: nothing (safetensors records dtypes and shapes, never a device).
- ``scaler.pt`` exists only for fp16 runs on CUDA (GradScaler.state_dict holds Python numbers): not rewritten here.
Each rank of an N-GPU run tags its own ``cuda:<local rank>``; one process (``cuda:0``) covers what the CPU sees.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from imagenet_trainer import checkpoints

from test_train import kill_at_checkpoint, ok, rows, run, train_cmd

_TAG_AS = []  # while non-empty, torch.save tags every storage with its last entry


def _tag(storage):
    return _TAG_AS[-1] if _TAG_AS else None


torch.serialization.register_package(-7, _tag, lambda storage, location: None)  # consulted before "cpu" (10)


def save_as_on(obj, path, location: str) -> None:
    """torch.save(obj, path) as it is written when obj's tensors live on `location`."""
    _TAG_AS.append(location)
    try:
        torch.save(obj, path)
    finally:
        _TAG_AS.pop()


def as_if_saved_on_cuda(ckpt) -> None:
    """Rewrite a one-process CPU checkpoint into what the same save looks like on cuda:0 (module docstring)."""
    for name in ("optimizer.bin", *sorted(p.name for p in ckpt.glob("custom_checkpoint_*.pkl"))):
        save_as_on(torch.load(ckpt / name, weights_only=False), ckpt / name, "cuda:0")
    states = torch.load(ckpt / "random_states_0.pkl", weights_only=False)
    seed, offset = 1234, 0  # a CUDA generator's state: Philox seed and offset, 8 bytes each
    states["torch_cuda_manual_seed"] = [torch.tensor([*seed.to_bytes(8, "little"), *offset.to_bytes(8, "little")],
                                                     dtype=torch.uint8)]
    torch.save(states, ckpt / "random_states_0.pkl")
    checkpoints.seal(ckpt)  # a CUDA save lists its own files' sizes


def test_a_checkpoint_saved_on_cuda_resumes_on_cpu_bit_for_bit(preprocessed, tmp_path):
    common = ("--epochs", "2", "--save_every_steps", "1", "--keep_last", "10", "--ema_decay", "0.9")
    ok(run(train_cmd(preprocessed, tmp_path / "straight", *common)))
    reference = rows(tmp_path / "straight")
    steps_per_epoch, last_step = reference[0]["step"], reference[-1]["step"]
    assert steps_per_epoch >= 2, "the fixture must give a mid-epoch step to resume from"
    mid_epoch = steps_per_epoch + 1

    out = tmp_path / "gpu"
    kill_at_checkpoint(train_cmd(preprocessed, out, *common), {**os.environ, "OMP_NUM_THREADS": "1",
                                                               "HF_HUB_OFFLINE": "1"}, out, mid_epoch, last_step)
    ckpt = out / "checkpoints" / f"step_{mid_epoch:08d}"
    kept = tmp_path / "as_saved_on_cpu"
    shutil.copytree(ckpt, kept)
    as_if_saved_on_cuda(ckpt)
    for name in ("optimizer.bin", "custom_checkpoint_1.pkl"):  # the rewrite is what a CPU-only torch.load refuses
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(ckpt / name, weights_only=False)
        assert (ckpt / name).read_bytes() != (kept / name).read_bytes()
    assert "torch_cuda_manual_seed" in torch.load(ckpt / "random_states_0.pkl", weights_only=False)

    resumed = ok(run(train_cmd(preprocessed, out, *common, "--resume_from_checkpoint", "latest")))
    assert f"at epoch 1, step {mid_epoch}" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "straight" / "checkpoints" / f"step_{last_step:08d}" / "model.safetensors")
    b = load_file(out / "checkpoints" / f"step_{last_step:08d}" / "model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [(r["val_top1"], r["ema_val_top1"]) for r in rows(out)] == \
        [(r["val_top1"], r["ema_val_top1"]) for r in reference]
    # what was loaded sits on the CPU: the optimizer's state in the resumed run's next checkpoint is a CPU one
    torch.load(out / "checkpoints" / f"step_{last_step:08d}" / "optimizer.bin", weights_only=True)
