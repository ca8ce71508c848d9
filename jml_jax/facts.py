"""Numbers the model, its data and its tools share: one owner each.

Imports nothing, so the data pipeline (which normalises float32 images with
the same statistics) and the PyTorch twin read them without JAX or Flax; the
logical and mesh axis names have their own owner, `jml_jax.axes`.
"""

# §1.4: the original's image normalisation constants (not ImageNet's), per
# RGB channel, applied to pixels scaled to [0, 1].
IMAGE_MEAN = (0.48, 0.498, 0.531)
IMAGE_STD = (0.214, 0.207, 0.207)

# The image grid the joint and relation modules read: ResNet layer4 of a
# 224x224 crop, 7x7 positions of 2048 channels (ResNet-50/101/152, width 64),
# flattened to 49 regions. A text-only model feeds zeros of this shape.
GRID_SIDE = 7
IMAGE_REGIONS = GRID_SIDE * GRID_SIDE
GRID_CHANNELS = 2048

# Added to attention and span-pooling scores at masked positions, as the
# original's BERT extended attention mask, (1 - mask) * -10000 (§11):
# exp(-10000 + x) is exactly 0 in float32, so the softmax ignores them.
MASK_VALUE = -10000.0
