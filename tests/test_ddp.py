"""Data parallelism: two CPU processes (gloo) end with identical projections and LoRA weights."""
import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file
    from rc_nbkit.trainer import Trainer, tiny_distillation_setup, tiny_run_config

    rank = int(sys.argv[2])
    pair, dataset, collate = tiny_distillation_setup(8, seed=0)
    if rank == 1:
        # Start rank 1 from other adapter and projection values: DDP must broadcast rank 0's at wrap time.
        with torch.no_grad():
            for name, parameter in pair.student.named_parameters():
                if parameter.requires_grad:
                    parameter.add_(0.01 * torch.randn_like(parameter))
            for projection in pair.projections:
                projection.weight.copy_(torch.linalg.qr(torch.randn_like(projection.weight)).Q)
    config = tiny_run_config(sys.argv[1], total_steps=3, data__batch_size=1)
    config.curriculum = [{"start": 0.0, "end": 1.0, "weights": {"ce": 1.0, "kl": 0.5, "geo": 0.15, "traj": 0.3, "cont": 0.3}}]
    trainer = Trainer(config, pair=pair, train_dataset=dataset, collate_fn=collate)
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    summary = trainer.train()
    trainer.close()
    values = {name: parameter.detach().contiguous() for named in trainer.trainable.values() for name, parameter in named}
    save_file(values, f"{sys.argv[1]}/rank{rank}.safetensors")
    print("DONE", rank, summary["reason"])
    """
)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_two_ranks_stay_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    processes = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen([sys.executable, str(script), str(tmp_path), str(rank)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert "finished" in stdout

    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    assert set(rank0) == set(rank1)
    assert any("projections" in name for name in rank0) and any("lora_" in name for name in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    # Training moved the weights away from rank 1's own initialisation, and the projections stayed orthonormal.
    for name, value in rank0.items():
        if "projections" in name:
            weight = value.double()
            assert torch.linalg.matrix_norm(weight.T @ weight - torch.eye(weight.shape[1], dtype=torch.float64)) < 1e-5
