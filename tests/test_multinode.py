"""Past one node, on one CPU: two torchrun "nodes" with a c10d rendezvous, resuming on another number of
processes, and scripts/slurm_train.sh driven by stand-ins for srun and scontrol, stopped by SIGUSR1."""
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from fineweb_gpt import checkpoint
from conftest import ROOT, TINY, losses, metrics, run_train

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def torchrun(nproc, *args, launcher=()):
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
            os.path.join(ROOT, "train.py"), *TINY, "--backend=gloo", *args]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def assert_same_curve(a, b):
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == list(range(len(lb)))  # every global step once
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=1e-5)


def test_two_nodes_match_one_process(synthetic_shards, tmp_path):
    args = [f"--data_dir={synthetic_shards}", "--max_iters=4", "--eval_interval=2", "--gradient_accumulation_steps=2"]
    run_train(synthetic_shards, tmp_path / "single", *args[1:])
    rdzv = ["--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=two-nodes"]
    nodes = [subprocess.Popen(torchrun(1, *args, f"--out_dir={tmp_path / 'nodes'}", launcher=rdzv),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err for _, err in outputs]
    assert sum("2 processes" in out for out, _ in outputs) == 1  # one global rank 0 prints
    assert_same_curve(tmp_path / "nodes", tmp_path / "single")


def test_resume_on_another_number_of_processes_continues_the_curve(synthetic_shards, tmp_path):
    # 1 process -> 2 processes -> 1 process, against one uninterrupted process: the same batches every step
    common = [f"--data_dir={synthetic_shards}", "--eval_interval=2", "--lr_decay_iters=6", "--gradient_accumulation_steps=2"]
    run_train(synthetic_shards, tmp_path / "whole", *common[1:], "--max_iters=6")
    out = tmp_path / "moved"
    run_train(synthetic_shards, out, *common[1:], "--max_iters=2")
    r = run(torchrun(2, *common, f"--out_dir={out}", "--max_iters=4", "--init_from=resume", launcher=["--standalone"]))
    assert "1 process(es) saved RNG states, 2 now" in r.stdout
    run_train(synthetic_shards, out, *common[1:], "--max_iters=6", "--init_from=resume")
    assert_same_curve(out, tmp_path / "whole")
    vals = lambda d: [row["val_loss"] for row in metrics(d) if "val_loss" in row]  # noqa: E731
    assert vals(out)[-1] == pytest.approx(vals(tmp_path / "whole")[-1], rel=1e-5)


def _stand_in(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _descendants(pid: int) -> list[int]:
    """Every process below pid (Linux /proc): what SLURM signals is the job step, not the batch shell."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from Linux's /proc")
def test_slurm_script_stops_on_the_time_limit_signal_and_a_resubmit_continues(synthetic_shards, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')  # one node: run the step here
    _stand_in(bin_dir / "scontrol", 'echo localhost\n')
    slurm_env = {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
                 "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": ROOT, "GPUS_PER_NODE": "2",
                 "MASTER_PORT": str(free_port())}
    out = tmp_path / "run"
    args = [*TINY, "--backend=gloo", f"--data_dir={synthetic_shards}", f"--out_dir={out}", "--eval_interval=100000"]
    job = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "slurm_train.sh"), *args, "--max_iters=100000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slurm_env, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= 3):
        time.sleep(0.2)
    for pid in _descendants(job.pid):  # --signal=USR1@N: every process of the step, torchrun included
        os.kill(pid, signal.SIGUSR1)
    stdout, stderr = job.communicate(timeout=90)
    assert job.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "SIGUSR1 received" in stdout and "continue with --init_from=resume" in stdout
    stopped = checkpoint.load_checkpoint(str(out / "ckpt.pt"))
    assert stopped["loop"]["step"] == max(losses(out)) + 1 and len(stopped["rng"]) == 2
    # the resubmitted job (same command, a later limit) continues from the checkpoint
    resumed = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_train.sh"), *args,
                              f"--max_iters={stopped['loop']['step'] + 2}"], capture_output=True, text=True, env=slurm_env,
                             cwd=tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: from step {stopped['loop']['step']}" in resumed.stdout
    assert sorted(losses(out)) == list(range(stopped["loop"]["step"] + 2))
    assert torch.load(out / "ckpt.pt", weights_only=True)["loop"]["step"] == stopped["loop"]["step"] + 2
