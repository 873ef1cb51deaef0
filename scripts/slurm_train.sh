#!/bin/bash
# Train on a SLURM cluster: one torchrun per node, one process per GPU, DDP across all nodes.
#
#   sbatch scripts/slurm_train.sh config/train_fineweb.py --out_dir=/shared/runs/gpt2
#   sbatch --nodes=4 --time=24:00:00 scripts/slurm_train.sh config/train_fineweb.py --out_dir=/shared/runs/gpt2
#
# The arguments are train.py's. The run starts with --init_from=auto, so the same command starts a run
# or continues the one in out_dir. Shortly before the time limit SLURM sends SIGUSR1 to every process
# of the job step: torchrun ignores it (the trap below), each trainer finishes its step, rank 0 saves
# out_dir/ckpt.pt and the job ends cleanly. Submit the same command again to continue, or queue a
# chain of jobs up front, each starting when the previous one ends:
#
#   jid=$(sbatch --parsable scripts/slurm_train.sh ARGS)
#   for i in 2 3 4; do jid=$(sbatch --parsable --dependency=afterany:$jid scripts/slurm_train.sh ARGS); done
#
# Every node must see the same code, the same data_dir, and out_dir on shared storage (rank 0 writes
# the checkpoints and every rank reads them on resume). Set your site's partition/account below.
#
#SBATCH --job-name=fineweb-gpt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --signal=USR1@180
#SBATCH --output=slurm-%j.out
#  --signal: seconds of warning before the limit; leave room for one training step plus one checkpoint
#  save (train.py logs its step time; `python bench.py CONFIG` measures it before you submit). SLURM
#  delivers it to every process of the step where it tracks them by cgroup (the usual setting); where it
#  does not reach the trainers, the SIGTERM at the limit still does (torchrun forwards it), with only
#  SLURM's KillWait (often 30 s) to finish the step and save.
set -euo pipefail

# Without InfiniBand, NCCL needs the network interface the nodes reach each other on:
# export NCCL_IB_DISABLE=1
# export NCCL_SOCKET_IFNAME=eth0
# export NCCL_DEBUG=WARN            # INFO to see which transport NCCL picked
# source .venv/bin/activate         # or however your site provides python with requirements.txt

export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
[ -n "$MASTER_ADDR" ] || { echo "slurm_train.sh: no rendezvous host from SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'" >&2; exit 1; }
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}
cd "${SLURM_SUBMIT_DIR:-.}"  # sbatch runs a copy of this script from a spool folder

echo "$(date): $SLURM_NNODES node(s) x $GPUS_PER_NODE process(es), rendezvous at $MASTER_ADDR:$MASTER_PORT"
# Each node's torchrun ignores SIGUSR1 (its default action would kill it, and its workers with it);
# the trainers it starts install their own handler for it.
# (srun no longer inherits sbatch's --cpus-per-task since Slurm 22.05: pass it on, or torchrun and all its
# workers may share one core)
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" bash -c 'trap "" USR1; exec python -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$SLURM_JOB_ID" \
    train.py --init_from=auto "$@"' slurm_train "$@"
echo "$(date): done; to continue the run (if it stopped before max_iters): sbatch scripts/slurm_train.sh $(printf '%q ' "$@")"
