"""MLP-Mixer (Tolstikhin et al., arXiv 2105.01601), written without mlpbnn: a patch-embedding
``nn.Conv`` (``stem``), blocks of token-mixing and channel-mixing MLPs built from ``nn.Dense``
(``MixerBlock_i/token_mixing/Dense_j``, ``.../channel_mixing/Dense_j``), LayerNorm, global
average pooling and a ``head`` ``nn.Dense``, as in big_vision's and the paper's code."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(nn.Dense(self.mlp_dim)(x))
        return nn.Dense(x.shape[-1])(y)


class MixerBlock(nn.Module):
    tokens_mlp_dim: int
    channels_mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        y = jnp.swapaxes(y, 1, 2)  # mix along the tokens
        y = MlpBlock(self.tokens_mlp_dim, name="token_mixing")(y)
        x = x + jnp.swapaxes(y, 1, 2)
        y = nn.LayerNorm()(x)
        return x + MlpBlock(self.channels_mlp_dim, name="channel_mixing")(y)


class MlpMixer(nn.Module):
    num_classes: int = 1000
    patch_size: int = 16
    hidden_dim: int = 512
    num_blocks: int = 8
    tokens_mlp_dim: int = 256
    channels_mlp_dim: int = 2048

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID", name="stem")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        for _ in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim)(x)
        x = nn.LayerNorm(name="pre_head_layer_norm")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=1))
