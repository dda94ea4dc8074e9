"""Plain Flax models written without mlpbnn, for ``mlpbnn.binarize`` (README: "Binarize your own
model"; ``configs/binarized_resnet_digits.py``, ``configs/binarized_mixer_digits.py``)."""
