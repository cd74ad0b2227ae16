"""Two gloo processes on CPU give the same loss and gradients as one process on the whole batch (1e-5)."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from starft_cli.train.methods import make_method

METHOD_OF = {"star": "starft", "kl": "kl", "none": "flyp"}
CLASSES = ["cat", "dog", "car", "tree"]
LABELS = [0, 1, 1, 2, 3, 0, 2, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grads(env, impl: str, freeze_text: bool, reg: str, accum: int = 1):
    """The StarFT step of the global batch (this process's share of it under DDP, in ``accum`` micro-batches)."""
    from starft_cli.device import cuda_call_args
    from starft_cli.models import load
    from starft_cli.prompts import load_pool
    from starft_cli.train.bank import build_bank, class_captions
    from starft_cli.train.step import MicroBatch, StarStep, Towers, template_indices

    torch.set_num_threads(1)
    loaded = load("starft-tiny:none", seed=0)
    student = loaded.model
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for _, p in student.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    if freeze_text:
        for name, p in student.named_parameters():
            if not (name.startswith("visual.") or name.startswith("logit_")):
                p.requires_grad_(False)
    student.train()
    pool = load_pool("background")
    bank = build_bank(teacher, loaded.tokenizer, CLASSES, "a photo of a {}.", pool, torch.device("cpu"))
    towers = Towers(student, trim=impl == "efficient")
    wrapped = towers
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(towers, **cuda_call_args(torch.device("cpu")).ddp)
    step = StarStep(
        towers=wrapped, clip=student, teacher=teacher, tokenizer=loaded.tokenizer, pool=pool,
        method=make_method(METHOD_OF[reg]), freeze_text=freeze_text, impl=impl, bank=bank,
        env=env,
    )  # fmt: skip
    n = len(LABELS)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor(LABELS)
    local = n // env.world_size
    part = slice(env.rank * local, (env.rank + 1) * local)
    caps = [class_captions(CLASSES, "a photo of a {}.")[i] for i in LABELS[part]]
    tidx = template_indices(0, 3, 0, n, len(pool), env)
    if accum == 1:
        out = step(images[part], labels[part], caps, tidx, 0.5, True)
        out.loss.backward()
    else:
        k = local // accum
        imgs, ys = images[part], labels[part]
        micro = [
            MicroBatch(imgs[i : i + k], ys[i : i + k], caps[i : i + k], tidx[i : i + k]) for i in range(0, local, k)
        ]
        no_sync = wrapped.no_sync if env.distributed else None
        out = step.accumulate(micro, 0.5, True, backward=lambda loss: loss.backward(), no_sync=no_sync)
    values = torch.stack([out.loss.detach(), out.contrastive, out.reg])
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= env.world_size
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    return values, grads


def _worker(rank: int, world: int, port: int, out: str, impl: str, freeze_text: bool, reg: str, accum: int) -> None:
    import torch.distributed as dist

    from starft_cli.train.distributed import DistEnv

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        env = DistEnv(rank=rank, world_size=world, local_rank=rank)
        values, grads = _loss_and_grads(env, impl, freeze_text, reg, accum)
        if rank == 0:
            torch.save({"values": values, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("impl", "freeze_text", "reg", "accum"),
    [
        ("efficient", False, "star", 1),
        ("efficient", True, "star", 1),
        ("straightforward", False, "kl", 1),
        ("efficient", False, "star", 2),  # two processes x two micro-batches (DDP no_sync) = one process, one batch
    ],
)
def test_two_gloo_processes_match_one_process(tmp_path: Path, impl: str, freeze_text: bool, reg: str, accum: int):
    from starft_cli.train.distributed import DistEnv

    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out, impl, freeze_text, reg, accum), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    values, grads = _loss_and_grads(DistEnv(), impl, freeze_text, reg)
    torch.testing.assert_close(two["values"], values, atol=1e-5, rtol=1e-5)
    assert values[2] > 1e-4  # the regulariser contributes
    assert two["grads"].keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(two["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path: Path):
    import json
    import shutil
    import subprocess
    import sys

    from tests.imagegen import make_class_folders

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "run"
    cmd = [
        torchrun, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "starft_cli", "finetune",
        "--backbone", "starft-tiny:none", "--data", f"folder:{data}", "--batch-size", "4", "--epochs", "1",
        "--warmup", "1", "--workers", "0", "--device", "cpu", "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(run)]  # printed once, by rank 0
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr  # e.g. DDP's broadcast_buffers
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # 12 images / global batch 4, each step logged once
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4
    state = torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 3


def _siglip_shaped(folder: Path) -> Path:
    """starft-tiny with a learned logit bias (``init_logit_bias``, as every open_clip SigLIP model has), saved as a
    model folder."""
    from starft_cli.models import _create_from_cfg, load, save_checkpoint

    tiny = load("starft-tiny:none", seed=0)
    cfg = {**tiny.model_cfg, "init_logit_bias": -10.0}
    torch.manual_seed(0)
    model = _create_from_cfg(cfg, dict(tiny.preprocess_cfg))
    assert isinstance(model.logit_bias, torch.nn.Parameter)
    save_checkpoint(model, folder, cfg, tiny.preprocess_cfg)
    return folder


def _finetune_worker(rank: int, world: int, port: int, model: str, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from starft_cli.train import build_config, finetune

    config = {"backbone": model, "data": f"folder:{data}", "method": "flyp", "batch_size": 4, "epochs": 1}
    finetune(build_config({**config, "warmup": 1, "workers": 0, "device": "cpu", "lr": 1e-3, "out": out}))


@pytest.mark.slow
def test_a_parameter_the_loss_never_uses_is_frozen_and_two_processes_train(tmp_path: Path, caplog):
    """Issue 20 item 3: a SigLIP model's logit_bias gets no gradient from the softmax contrastive loss; trained,
    DDP stopped at step 2 ("Expected to have finished reduction in the prior iteration"). It is frozen, logged,
    and two gloo processes train to the end."""
    import json
    import logging

    from safetensors.torch import load_file

    from tests.imagegen import make_class_folders

    model = _siglip_shaped(tmp_path / "siglip")
    data = make_class_folders(tmp_path / "data", ["cat", "dog", "car"], per_class=4)
    run = tmp_path / "run"
    mp.spawn(_finetune_worker, args=(2, _free_port(), str(model), str(data), str(run)), nprocs=2, join=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    before, after = (
        load_file(str(model / "open_clip_model.safetensors")),
        load_file(str(run / "checkpoints" / "last" / "open_clip_model.safetensors")),
    )
    assert float(after["logit_bias"]) == float(before["logit_bias"]) == -10.0  # frozen
    assert not torch.equal(after["logit_scale"], before["logit_scale"])  # what the loss uses trains
    # the same in one process, where the frozen parameter is named in the log
    from starft_cli.train import build_config, finetune

    config = {"backbone": str(model), "data": f"folder:{data}", "method": "flyp", "batch_size": 4, "epochs": 1}
    with caplog.at_level(logging.INFO, logger="starft_cli"):
        finetune(build_config({**config, "workers": 0, "device": "cpu", "max_steps": 1, "out": str(tmp_path / "one")}))
    assert "not trained, as the loss does not use them: logit_bias" in caplog.text
