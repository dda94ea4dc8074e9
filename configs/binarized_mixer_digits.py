"""A plain Flax MLP-Mixer (``examples/mlp_mixer.py``, built from ``nn.Dense``) binarized by rules
in their text form and trained on scikit-learn's digits:

    python train.py --config configs/binarized_mixer_digits.py --workdir runs/binarized_mixer

The patch embedding (``stem``) and the ``head`` stay real; every Dense of the token- and
channel-mixing MLPs binarizes (BBC MLP on the weights, ApproxSign on the inputs). The rules are
text, so they can be changed on the command line:
``--config.model.binarize="Conv=real;Dense@head=real;Dense=ste/approx_sign"``.
"""

from configs import digits


def get_config():
    c = digits.get_config()
    c.model = {"name": "examples.mlp_mixer:MlpMixer",
               "kwargs": {"patch_size": 2, "hidden_dim": 32, "num_blocks": 2, "tokens_mlp_dim": 32,
                          "channels_mlp_dim": 64},
               "binarize": "Conv=real;Dense@head=real;Dense=mlp(init='positive')/approx_sign"}
    c.estimator.weights = "mlp"  # the rules name the estimators; config.estimator keeps its defaults
    return c
