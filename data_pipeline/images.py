"""Image decoding, resizing and cropping with tf.data / tf.image (§1.4, §2.3).

Every image is decoded once per run (or once per TFDS build) into RGB uint8:
  * JML images (§1.4): straight resize to 600x400 (W x H, aspect ratio not
    kept), then a 224x224 crop chosen by `crop_mode`:
      'fixed'  one seeded random window + horizontal flip (p=0.5) per image
               id. The seed is a stable hash of (crop_seed, image_id), so the
               crop is identical across epochs, processes, splits and
               machines: the original drew its random crop once and cached
               it (§1.4, §10.7).
      'center' the centre window, no flip.
      'random' the resized 600x400 source is kept and a fresh window + flip is
               drawn per (epoch, example) at batch time (true augmentation).
  * TRC images (§2.3): straight resize to 224x224, no crop, no flip.

Resampling: `tf.image.resize(method='bilinear', antialias=True)`. The original
called PIL's `Image.resize((600, 400))` without a filter; Pillow >= 7 then uses
BICUBIC for RGB images, older Pillow NEAREST, and torchvision's transforms
would use BILINEAR. All PIL filters widen their support when shrinking
(antialiasing), so antialiased bilinear is the closest tf.image match that is
stable across versions; pixels differ from PIL by a few grey levels, never
bit-exact. The result is rounded to uint8 as PIL does.

A JPEG whose entropy-coded data is damaged (garbage bytes in the middle) is
unreadable too: libjpeg decodes it with a warning ("Corrupt JPEG data ...")
into a partly grey picture, and tf.image returns that without an error, so the
decode pass watches for libjpeg's warnings (`_native_stderr`) and re-checks
each JPEG alone when one appears. Garbage that libjpeg decodes without any
warning (about a third of random 4-64-byte mid-scan garbage in a 224x224
baseline JPEG, tried on this machine: the Huffman decoder resynchronises and
reaches the end marker on time) cannot be told from a real picture by the
decoder, and PIL, built on libjpeg too, reports even less; such a file still
counts as decoded.

A missing or unreadable image never stops a run: it is replaced by the
configured fallback image (cropped with the failing id's own window, as the
original cached the fallback under the failing id) or by zeros; it is counted
and named in an `ImageReport`, logged with `logging.warning` at the end of the
pass, and its examples get `image_ok = 0`.

`normalize` is the NumPy version of what the model does on the device:
x / 255, then (x - mean) / std per RGB channel, float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class ImageReport:
    """What happened to the images of one preprocessing pass.

    Attributes:
      num_images: distinct image ids asked for.
      missing_ids: ids whose file does not exist.
      corrupt_ids: ids whose file exists but cannot be decoded.
      fallback: 'zeros' or the path of the fallback image used in their place.
    """

    num_images: int = 0
    missing_ids: list[str] = dataclasses.field(default_factory=list)
    corrupt_ids: list[str] = dataclasses.field(default_factory=list)
    fallback: str = "zeros"

    @property
    def num_replaced(self) -> int:
        return len(self.missing_ids) + len(self.corrupt_ids)

    @property
    def num_ok(self) -> int:
        return self.num_images - self.num_replaced

    def summary(self) -> str:
        text = f"images: {self.num_ok}/{self.num_images} decoded"
        if self.num_replaced:
            text += (
                f"; {self.num_replaced} replaced by {self.fallback}"
                f" (missing {len(self.missing_ids)}: {self.missing_ids};"
                f" unreadable {len(self.corrupt_ids)}: {self.corrupt_ids})"
            )
        return text

    def log(self) -> None:
        """logging.warning when anything was replaced, else logging.info."""
        (logger.warning if self.num_replaced else logger.info)(self.summary())

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ImageReport:
        return cls(**d)


# --------------------------------------------------------------------------- crops


def _stable_seed(*parts) -> int:
    """A 64-bit seed from a stable hash (Python's hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def fixed_crop_box(image_id: str, crop_seed: int, source_hw: tuple[int, int], crop_size: int):
    """The frozen random window of one image (§1.4, §10.7).

    Returns:
      (top, left, flip): ints and a bool; a pure function of its arguments.
    """
    h, w = source_hw
    rng = np.random.default_rng(_stable_seed("fixed-crop", crop_seed, image_id))
    top = int(rng.integers(0, h - crop_size + 1))
    left = int(rng.integers(0, w - crop_size + 1))
    flip = bool(rng.random() < 0.5)
    return top, left, flip


def center_crop_box(source_hw: tuple[int, int], crop_size: int):
    """torchvision CenterCrop's window: offsets round((H - size) / 2)."""
    h, w = source_hw
    return int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0)), False


def random_crop_boxes(
    crop_seed: int, shuffle_seed: int, epoch: int, num: int, source_hw: tuple[int, int], crop_size: int
):
    """Fresh windows for every example of one epoch ('random' crop mode).

    Returns:
      tops [num] int64, lefts [num] int64, flips [num] bool: row i is the
      window of example i in this epoch, a pure function of (crop_seed,
      shuffle_seed, epoch), so the same on every process and after a resume.
    """
    h, w = source_hw
    rng = np.random.default_rng([_stable_seed("random-crop", crop_seed, shuffle_seed), epoch])
    tops = rng.integers(0, h - crop_size + 1, size=num)
    lefts = rng.integers(0, w - crop_size + 1, size=num)
    flips = rng.random(num) < 0.5
    return tops, lefts, flips


def apply_crop(source: np.ndarray, top: int, left: int, flip: bool, crop_size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [crop_size, crop_size, 3] uint8 window (flipped left-right)."""
    out = source[top : top + crop_size, left : left + crop_size]
    return out[:, ::-1] if flip else out


def normalize(images_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[..., 3] uint8 -> [..., 3] float32: (x / 255 - mean) / std per channel."""
    x = np.asarray(images_uint8, dtype=np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# --------------------------------------------------------------------------- decoding


_TF_READY = False


def import_tf():
    """TensorFlow, with its GPUs hidden: it only decodes images here, and a
    GPU build of TF would otherwise reserve accelerator memory that JAX needs."""
    import tensorflow as tf

    global _TF_READY
    if not _TF_READY:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised; nothing to change then
            pass
        _TF_READY = True
    return tf



def _decode_resize(data, out_hw):
    """Encoded bytes (JPEG/PNG/GIF first frame/BMP) -> [h, w, 3] uint8 tensor."""
    tf = import_tf()

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), out_hw, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# libjpeg's warnings for damaged data (jerror.h: JWRN_HIT_MARKER, JWRN_EXTRANEOUS_DATA,
# JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC, JWRN_JPEG_EOF, ...). It prints the first
# warning of each image to stderr and decodes on.
_LIBJPEG_CORRUPT = ("Corrupt JPEG data", "Premature end of JPEG file")


@contextlib.contextmanager
def _native_stderr():
    """Collects what native code writes to file descriptor 2 inside the block.

    Yields a list that holds, after the block, the libjpeg corruption warnings
    written meanwhile (every other line is passed on to the real stderr).
    """
    warnings: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield warnings
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            other = []
            for line in sink.read().decode("utf-8", "replace").splitlines(keepends=True):
                (warnings if line.startswith(_LIBJPEG_CORRUPT) else other).append(line)
            if other:
                os.write(2, "".join(other).encode("utf-8"))


def _is_jpeg(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


def jpeg_corruption(path: str) -> str | None:
    """libjpeg's warning when the JPEG at `path` holds damaged data, else None
    (also None for a file that is not a JPEG)."""
    tf = import_tf()

    if not _is_jpeg(path):
        return None
    with _native_stderr() as warnings:
        try:
            tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
        except tf.errors.InvalidArgumentError as e:
            return e.message.splitlines()[0]
    return warnings[0].strip() if warnings else None


def decode_image_file(path: str, out_hw: tuple[int, int]) -> np.ndarray:
    """One file -> [h, w, 3] uint8 NumPy array. Raises ValueError if unreadable
    (also for a JPEG with damaged data)."""
    tf = import_tf()

    try:
        with _native_stderr() as warnings:
            image = _decode_resize(tf.io.read_file(path), out_hw).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise ValueError(f"cannot read image {path}: {e.message.splitlines()[0]}") from None
    if warnings:
        raise ValueError(f"cannot read image {path}: {warnings[0].strip()}")
    return image


@dataclasses.dataclass
class ImageSettings:
    """How one split's images are turned into arrays.

    source_hw: size after the straight resize (H, W).
    crop: 'fixed' | 'center' | 'random' | 'none' ('random' keeps the source;
      'none' is the TRC straight resize).
    """

    source_hw: tuple[int, int]
    crop: str
    crop_size: int
    crop_seed: int

    @property
    def stored_hw(self) -> tuple[int, int]:
        """Size of the arrays preprocess_images returns."""
        if self.crop in ("fixed", "center"):
            return (self.crop_size, self.crop_size)
        return self.source_hw

    @classmethod
    def from_config(cls, data_config, relation: bool) -> ImageSettings:
        if relation:  # §2.3: TRC images, straight resize, no crop.
            s = int(data_config.relation_resize)
            return cls((s, s), "none", s, int(data_config.crop_seed))
        w, h = data_config.resize_wh
        return cls((int(h), int(w)), data_config.crop_mode, int(data_config.crop_size), int(data_config.crop_seed))

    def window(self, image_id: str):
        if self.crop == "fixed":
            return fixed_crop_box(image_id, self.crop_seed, self.source_hw, self.crop_size)
        if self.crop == "center":
            return center_crop_box(self.source_hw, self.crop_size)
        return None  # 'random' and 'none' store the whole resized image.


def preprocess_images(
    image_dir: str,
    image_ids: Sequence[str],
    settings: ImageSettings,
    fallback_image: str | None = None,
) -> tuple[np.ndarray, np.ndarray, ImageReport]:
    """Decodes, resizes and crops every distinct image once (tf.data, parallel).

    Args:
      image_dir: folder holding the files named by image_ids.
      image_ids: distinct image file names, [U].
      settings: resize and crop settings.
      fallback_image: file used for missing/unreadable images (absolute or
        relative to image_dir); None = zeros. It must itself be readable.

    Returns:
      images: [U, *settings.stored_hw, 3] uint8, row u for image_ids[u].
      ok: [U] bool, False where the fallback/zeros were used.
      report: the ImageReport of this pass (already logged).
    """
    tf = import_tf()

    ids = list(image_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("preprocess_images needs distinct image ids")
    report = ImageReport(num_images=len(ids))
    paths = [os.path.join(image_dir, i) for i in ids]
    exists = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    report.missing_ids = [i for i, e in zip(ids, exists) if not e]

    sh, sw = settings.stored_hw
    images = np.zeros((len(ids), sh, sw, 3), np.uint8)
    ok = np.zeros(len(ids), bool)
    windows = [settings.window(i) or (0, 0, False) for i in ids]
    present = np.flatnonzero(exists)
    if present.size:
        tops = np.array([windows[i][0] for i in present], np.int32)
        lefts = np.array([windows[i][1] for i in present], np.int32)
        flips = np.array([windows[i][2] for i in present], bool)
        source_hw = settings.source_hw

        def load(index, path, top, left, flip):
            image = _decode_resize(tf.io.read_file(path), source_hw)
            image = tf.image.crop_to_bounding_box(image, top, left, sh, sw)
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
            return index, image

        ds = tf.data.Dataset.from_tensor_slices(
            (present.astype(np.int32), [paths[i] for i in present], tops, lefts, flips)
        )
        # Decode errors drop the element; the carried index tells which failed.
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
        with _native_stderr() as warnings:
            for index, image in ds.batch(64).as_numpy_iterator():
                images[index] = image
                ok[index] = True
        if warnings:  # some JPEG decoded from damaged data: find which, one by one
            for i in present:
                if ok[i] and jpeg_corruption(paths[i]) is not None:
                    ok[i] = False
                    images[i] = 0
    report.corrupt_ids = [ids[i] for i in present if not ok[i]]

    failed = np.flatnonzero(~ok)
    if failed.size and fallback_image is not None:
        fb_path = fallback_image if os.path.isabs(fallback_image) else os.path.join(image_dir, fallback_image)
        try:
            source = decode_image_file(fb_path, settings.source_hw)
        except ValueError as e:
            raise ValueError(f"data.fallback_image is unusable: {e}") from None
        report.fallback = fb_path
        for i in failed:
            window = settings.window(ids[i])
            images[i] = source if window is None else apply_crop(source, *window, settings.crop_size)
    report.log()
    return images, ok, report
