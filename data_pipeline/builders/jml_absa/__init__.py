"""TFDS builder of the JMASA data sets (Twitter-2015/2017 and the bundled sample)."""
