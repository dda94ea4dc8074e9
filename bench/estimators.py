"""Estimator cost: forward+backward of every estimator on a 64x64x56x56 float32 tensor as a ratio
to plain STE, and the BBC MLP's cost inside a BinaryConv at ResNet-18 layer-1 shapes (batch 32).

    python -m bench.estimators [--rounds 5] [--shape 64,64,56,56]

Prints a table and writes bench/results/estimators.json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from bench.common import interleaved_medians, write_json
from mlpbnn import estimators as E
from mlpbnn import layers as L


def estimator_step(est: E.Estimator):
    """jit'd forward + backward: y = est(theta, x), cotangents for x and theta."""
    def step(theta, x, g):
        y, vjp = jax.vjp(lambda th, v: est(th, v, 0.5), theta, x)
        return y, vjp(g)
    return jax.jit(step)


def conv_step(weight_estimator: E.Estimator, x):
    layer = L.BinaryConv(64, 3, 1, 1, spec=L.BinarySpec(weights=weight_estimator, inputs="approx_sign"))
    variables = layer.init(jax.random.key(0), x)

    @jax.jit
    def step(v, xx, g):
        y, vjp = jax.vjp(lambda vv, xi: layer.apply(vv, xi), v, xx)
        return y, vjp(g)

    g = jax.random.normal(jax.random.key(1), x.shape[:3] + (64,))
    return lambda: step(variables, x, g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", default="64,64,56,56")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    x = jax.random.normal(jax.random.key(0), shape) * 0.5
    g = jax.random.normal(jax.random.key(1), shape)
    fns = {}
    for name in E.names():
        est = E.get(name)
        theta = est.init(jax.random.key(2))
        step = estimator_step(est)
        fns[name] = lambda step=step, theta=theta: step(theta, x, g)
    times = interleaved_medians(fns, args.rounds)
    print(f"estimator forward+backward on a {'x'.join(map(str, shape))} float32 tensor "
          f"({x.size / 1e6:.1f}M elements), median of {args.rounds} interleaved rounds")
    print(f"{'estimator':<12} {'ms':>9} {'x ste':>7}")
    for name in E.names():
        print(f"{name:<12} {times[name] * 1e3:9.1f} {times[name] / times['ste']:7.2f}")

    # The BBC MLP inside a BinaryConv at ResNet-18 layer-1 shapes: 64 -> 64, 3x3, 56x56, batch 32.
    xc = jax.random.normal(jax.random.key(3), (32, 56, 56, 64))
    w = jax.random.normal(jax.random.key(4), (3, 3, 64, 64)) * 0.05
    mlp = E.get("mlp")
    theta = mlp.init(jax.random.key(5))
    mlp_alone = estimator_step(mlp)
    conv_times = interleaved_medians({
        "conv_mlp": conv_step(mlp, xc),
        "conv_ste": conv_step(E.get("ste"), xc),
        "mlp_on_weights": lambda: mlp_alone(theta, w, jnp.ones_like(w)),
    }, args.rounds)
    share = conv_times["mlp_on_weights"] / conv_times["conv_mlp"]
    delta = (conv_times["conv_mlp"] - conv_times["conv_ste"]) / conv_times["conv_mlp"]
    print("\nBinaryConv 64->64 3x3 on 32x56x56x64 (ApproxSign inputs), forward+backward:")
    print(f"  with MLP weights {conv_times['conv_mlp'] * 1e3:.1f} ms, with STE weights "
          f"{conv_times['conv_ste'] * 1e3:.1f} ms")
    print(f"  MLP estimator alone on the 36,864 weights: {conv_times['mlp_on_weights'] * 1e3:.2f} ms "
          f"= {share:.2%} of the BinaryConv; (MLP - STE) / MLP = {delta:.2%}")
    path = write_json("estimators", {
        "shape": shape, "rounds": args.rounds,
        "estimator_ms": {k: v * 1e3 for k, v in times.items()},
        "ratio_to_ste": {k: v / times["ste"] for k, v in times.items()},
        "binary_conv_layer1_ms": {k: v * 1e3 for k, v in conv_times.items()},
        "mlp_share_of_binary_conv": share, "mlp_minus_ste_share": delta,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
