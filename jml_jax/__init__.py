"""JML (Ju et al., EMNLP 2021) in JAX/Flax.

Importing this package imports neither TensorFlow nor torch, and changes no JAX
configuration.
"""

__version__ = "0.1.0"
