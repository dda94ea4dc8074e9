#!/usr/bin/env bash
# The checks that need a GPU, in one run on a machine that has one (CI has none):
#   1. the estimator tests on the GPU backend (the MLP backward against plain autodiff to 1e-5),
#   2. bench/train_step.py there (mlpbnn against PyTorch on CUDA, the MLP chunk sweep),
#   3. the conv, layer and model tests on the GPU at HIGHEST matmul precision (parity tests
#      compare with float32 CPU references; XLA's default on GPUs is TF32).
# Usage: bash bench/gpu_checks.sh [OUTDIR]   (logs and train_step_gpu.json land in OUTDIR)
set -uo pipefail
out=${1:-bench/results}
mkdir -p "$out"
py=${PYTHON:-python3}
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in the benchmark: no up-front grab of 75% of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
$py -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__)" 2>&1 | tee "$out/gpu_env.log"
t0=$SECONDS
$py -m pytest tests/test_estimators.py 2>&1 | tee "$out/gpu_tests_estimators.log"
echo "estimator tests: $((SECONDS - t0)) s"
t0=$SECONDS
$py -m bench.train_step --rounds 20 --sizes 32,64 --big --big-rounds 5 2>&1 | tee "$out/gpu_train_step.log"
cp bench/results/train_step_gpu.json "$out/" 2>/dev/null
echo "train_step bench: $((SECONDS - t0)) s"
t0=$SECONDS
# Parity tests compare with float32 CPU references: at XLA's default GPU precision (TF32) they
# fail by design (bench/results/gpu/tests_conv_layers_models_default_precision.txt), so run them
# at full float32 precision.
JAX_DEFAULT_MATMUL_PRECISION=highest $py -m pytest tests/test_conv.py tests/test_layers.py tests/test_models.py \
  2>&1 | tee "$out/gpu_tests_layers_highest.log"
echo "layer tests: $((SECONDS - t0)) s"
