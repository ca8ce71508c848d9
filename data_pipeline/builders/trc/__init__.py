"""TFDS builder of the TRC text-image relation set (§2.3)."""
