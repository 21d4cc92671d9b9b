#!/usr/bin/env bash
# The GPU checks in one run, for a session lent a device machine (python3 there holds a CUDA torch
# and every package modeconn needs; nothing is installed):
#   run(command="bash benchmarks/device_check.sh", timeout_s=540)
# Logs go to $OUT (the tool's folder that comes back) or /tmp/device-check. Each step has its own
# time limit so that one slow step cannot take the others' results with it.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp/device-check}
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$LOG/gpu.txt"
# CUDA against CPU: evaluation engine (vmap) with BN, weight matching, curve fitting, Hessian
# trace, the commands end to end, and bit-identical resume with dropout.
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  "tests/test_train.py::test_resume_is_bit_identical_on_cuda_with_dropout" 2>&1 | tee "$LOG/tests.txt"
timeout 120 python3 benchmarks/interpolation.py --device cuda 2>&1 | tee "$LOG/interpolation.txt"
timeout 150 python3 benchmarks/landscape.py --device cuda 2>&1 | tee "$LOG/landscape.txt"
