#!/usr/bin/env bash
# charlm's GPU checks, run from the repository root on a machine with a CUDA GPU:
#
#     bash bench/gpu.sh [FOLDER]      # figures and test results also go to FOLDER (default gpu-results)
#
# The CUDA tests (tests/test_cuda.py); the training step next to a bare cuDNN step for an
# LSTM and a GRU of 2 x 1024, batch 128 x 256, with the host syncs of charlm's step
# counted; and sampling from the same LSTM, one stream and 256 side by side.
set -u
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())"
} 2>&1 | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda-tests.txt"
python3 bench/step_speed.py --device cuda --cells lstm gru --layers 2 --hidden 1024 --batch 128 --seq 256 \
    --steps 30 --rounds 7 2>&1 | tee "$out/step-speed.txt"
python3 bench/sample_speed.py --device cuda --cells lstm --layers 2 --hidden 1024 --chars 500 --samples 256 \
    --batch-share 4 --rounds 5 2>&1 | tee "$out/sample-speed.txt"
