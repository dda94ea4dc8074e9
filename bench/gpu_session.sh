#!/usr/bin/env bash
# The accelerator session (issue 24): everything a lent GPU must measure, in one run that ends
# within 9 minutes of wall time on one H200 (a device loan is 15 minutes in all, start included).
#
#   bash bench/gpu_session.sh [--tiny] [OUTDIR]      (OUTDIR: bench/results/gpu)
#
# Parts, most important first; each runs under its own timeout, no longer than what is left of the
# session's 520 s, so a slow part cannot eat the rest (its log and rc are kept, the next part runs):
#   tests      the MLP backward forms' tests on the GPU, the Pallas kernel's included (Triton, not
#              interpret mode), at JAX_DEFAULT_MATMUL_PRECISION=highest
#   estimator  the estimator backward alone over bireal_resnet18's 11.0M weights, by form and chunk
#   step_reduce / step_pallas  the 32x32 step table against PyTorch and the MLP's share of the
#              224x224 step (batch 32), with the reduce and the Pallas backward
#   imagenet   bench/imagenet_step.py: the ImageNet recipe step at 224, batch 128 and 256, bf16,
#              against PyTorch AMP (written after each batch, so a timeout keeps batch 128)
#   study      the vmapped estimator study's images/s at K = 1, 4, 16 (full-width budget network)
# then bench/gpu_summary.py writes OUTDIR/summary.md from the JSON files.
#
# --tiny rehearses the same parts on the CPU at tiny sizes (tests/test_bench.py runs it).
set -uo pipefail
tiny=0
out=bench/results/gpu
for a in "$@"; do
  case $a in
    --tiny) tiny=1 ;;
    -*) echo "gpu_session.sh: unknown option $a (use --tiny and/or an output folder)" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
mkdir -p "$out" || exit 1
py=${PYTHON:-python3}
export MLPBNN_BENCH_RESULTS
MLPBNN_BENCH_RESULTS=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
total=${GPU_SESSION_SECONDS:-520}
if ((tiny)); then
  export JAX_PLATFORMS=cpu OMP_NUM_THREADS=1  # no thread oversubscription beside a test run
  : > "$out/parts.txt"
else
  export JAX_PLATFORMS=cuda
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU in the benches
  : > "$out/parts.txt"
  nvidia-smi -L > "$out/env.log" 2>&1
fi
start=$SECONDS

part() {  # part NAME LIMIT_S COMMAND...: logs to OUTDIR/NAME.log, appends "NAME rc=.. N s" to parts.txt
  local name=$1 limit=$2
  shift 2
  local left=$((total - (SECONDS - start)))
  if ((left < 15)); then
    echo "$name skipped: $left s of the session left" | tee -a "$out/parts.txt"
    return
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local note=""
  ((rc == 124 || rc == 137)) && note=" (timed out)"
  echo "$name rc=$rc $((SECONDS - t0)) s, limit $limit s$note" | tee -a "$out/parts.txt"
}

$py -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" >> "$out/env.log" 2>&1

if ((tiny)); then  # every part's code path at the smallest sizes; the numbers mean nothing
  part tests 120 env JAX_DEFAULT_MATMUL_PRECISION=highest $py -m pytest -p no:cacheprovider \
    tests/test_estimators_mlp_pallas.py -k "default_chunk"
  part estimator 60 $py -m bench.train_step --only-estimator --rounds 1 --width 4 --out estimator
  # One backward form (the session's second run differs only in --mlp-backward) and one small
  # row: the MLP steps' compiles are what costs here, and --big compiles MLP and STE.
  part step_reduce 90 $py -m bench.train_step --rounds 1 --sizes 8 --batch 2 --width 4 --no-estimator \
    --no-xla --networks bireal18_ste --big --big-size 32 --big-batch 1 --mlp-backward reduce --out step_reduce
  part imagenet 120 $py -m bench.imagenet_step --size 32 --batches 2 --width 4 --stages 1,1,1,1 \
    --networks bireal18_mlp,bireal18_ste --num-classes 10 --teacher resnet18 --rounds 1 --out imagenet
  part study 60 $py -m bench.estimator_study --throughput 1,2 --rows ste --dataset digits --pad 12 \
    --width 4 --stages 1 --batch 4 --throughput_steps 1 --throughput_warmup 1 --out "$out/study.json"
else
  part tests 100 env JAX_DEFAULT_MATMUL_PRECISION=highest $py -m pytest -p no:cacheprovider \
    tests/test_estimators_mlp_pallas.py tests/test_estimators_mlp_backward.py
  part estimator 60 $py -m bench.train_step --only-estimator --rounds 10 --out estimator
  for form in reduce pallas; do
    part "step_$form" 100 $py -m bench.train_step --rounds 10 --sizes 32 --batch 64 --no-estimator \
      --big --big-rounds 5 --mlp-backward "$form" --out "step_$form"
  done
  part imagenet 150 $py -m bench.imagenet_step --batches 128,256 --rounds 5 --out imagenet
  part study 60 $py -m bench.estimator_study --budget --throughput 1,4,16 --rows ste,mlp_pos --dataset digits \
    --pad 12 --out "$out/study.json"
fi
$py -m bench.gpu_summary "$out" > "$out/summary.md"
echo "session: $((SECONDS - start)) s; summary in $out/summary.md"
cat "$out/summary.md"
