#!/bin/bash
# The release's scale on SLURM: 16 nodes x 8 GPUs = 128 GPUs, global batch 2048 (16 per GPU, no accumulation).
# One task per node; torchrun inside it starts the 8 GPU processes. Resubmitting (or --requeue) resumes the run.
#SBATCH --job-name=paella-v3
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120          # 2 minutes before the time limit: checkpoint and exit cleanly
#SBATCH --output=logs/%x-%j.out

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=29500
export OMP_NUM_THREADS=8
export NCCL_DEBUG=WARN               # INFO when a job does not start
# export NCCL_SOCKET_IFNAME=...      # your cluster's network interface (and its EFA / InfiniBand variables)

CONFIG=${CONFIG:-configs/paella_v3.yaml}
RUN=${RUN:-/shared/runs/paella_v3}   # on a file system every node sees
mkdir -p "$RUN"
srun --kill-on-bad-exit=1 bash -c "torchrun --nnodes=$SLURM_NNODES --nproc_per_node=8 \
    --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT \
    -m paella_nb.full_scale $CONFIG out_dir=$RUN $*" &
SRUN=$!
# SIGUSR1 reaches this batch shell: ask the trainer to stop (it checkpoints at the end of the step, then exits 0)
trap "touch $RUN/STOP" USR1
wait $SRUN; wait $SRUN
