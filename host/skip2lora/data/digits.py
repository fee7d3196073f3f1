"""A second drift scenario whose data ships inside a package: scikit-learn's handwritten digits.

The fan spectra are the data the defaults were first tuned on; these are not. 1797 images of
8x8 pixels, features 0..16 (grey levels as the dataset publishes them, unscaled, as a new
user's sensor would hand them over), 10 classes, read from scikit-learn's own files: nothing is
downloaded, so the scenario runs anywhere the package is installed.

The drift is a new writer (or a camera mounted one pixel off): every target image is moved
one pixel to the right, its rightmost column falling off the frame. A model trained on the
unshifted digits loses about half its accuracy on them, and the adapters can win it back.

Splits (a fixed shuffle, so every run sees the same images):

- pretrain    = half of the images, unshifted       (what the model ships with)
- source_test = the other half, unshifted           (how well it does where it was trained)
- finetune    = half of that other half, shifted    (what the board collects and trains on)
- test        = the rest of it, shifted             (the number that matters)

finetune and test hold different images, and neither holds an image the model was
pre-trained on.
"""
import numpy as np

from ..errors import UserError
from . import Scenario

N_FEATURES = 64
CLASS_NAMES = tuple(str(d) for d in range(10))
SCENARIO = "digits-shifted"
SHUFFLE_SEED = 0
SHIFT_PX = 1  # pixels to the right


def load_digits_arrays():
    """(X float32 (1797, 64) in 0..16, y int64), as scikit-learn ships them."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits scenario needs scikit-learn: pip install scikit-learn") \
            from None
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def shift_right(X, pixels=SHIFT_PX):
    """Each 8x8 image moved `pixels` to the right, zeros coming in on the left."""
    im = np.asarray(X, np.float32).reshape(-1, 8, 8)
    out = np.zeros_like(im)
    out[:, :, pixels:] = im[:, :, :8 - pixels]
    return out.reshape(-1, N_FEATURES)


def load_scenario(name=SCENARIO):
    if name != SCENARIO:
        raise UserError(f"unknown digits scenario {name!r}; the one there is is {SCENARIO}")
    X, y = load_digits_arrays()
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(y))
    X, y = X[order], y[order]
    half, three_quarters = len(y) // 2, (3 * len(y)) // 4
    source, other = slice(0, half), slice(half, None)
    ft, test = slice(half, three_quarters), slice(three_quarters, None)
    return Scenario(
        name=SCENARIO,
        pretrain=(X[source], y[source]),
        source_test=(X[other], y[other]),
        finetune=(shift_right(X[ft]), y[ft]),
        test=(shift_right(X[test]), y[test]),
        class_names=CLASS_NAMES,
        notes=[f"pretrain: sklearn digits, {half} images (shuffle seed {SHUFFLE_SEED})",
               f"source_test: the other {len(y) - half} images, unshifted",
               f"finetune: {three_quarters - half} of those, shifted {SHIFT_PX} px right",
               f"test: the other {len(y) - three_quarters}, shifted {SHIFT_PX} px right"])
