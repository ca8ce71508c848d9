"""Image decoding, crops, fallbacks and normalisation (data_pipeline/images.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipeline import images as im
from helpers.tiny_dataset import CORRUPT, IMAGE_FILES, MISSING, write_images

SOURCE_HW = (400, 600)  # the original's 600x400 (W x H) resize, §1.4


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    pixels = write_images(folder)
    return folder, pixels


def _settings(crop):
    return im.ImageSettings(SOURCE_HW, crop, 224, 42)


def test_png_gif_bmp_decode_exactly_and_gif_takes_first_frame(image_dir):
    folder, pixels = image_dir
    for name in ("i1.png", "i2.gif", "i3.bmp", "i5.png"):
        decoded = im.decode_image_file(str(folder / name), pixels[name].shape[:2])  # same size: no resampling
        assert decoded.dtype == np.uint8 and decoded.shape == pixels[name].shape
        np.testing.assert_array_equal(decoded, pixels[name], err_msg=name)
    second_frame = 255 - np.asarray(Image.open(folder / "i2.gif").convert("RGB"))
    assert not np.array_equal(im.decode_image_file(str(folder / "i2.gif"), (60, 90)), second_frame)


def test_output_shape_and_dtype(image_dir):
    folder, _ = image_dir
    for crop, hw in (("fixed", (224, 224)), ("center", (224, 224)), ("random", SOURCE_HW)):
        images, ok, _ = im.preprocess_images(str(folder), IMAGE_FILES, _settings(crop))
        assert images.shape == (len(IMAGE_FILES), *hw, 3) and images.dtype == np.uint8
        assert ok.all()
    relation = im.ImageSettings((224, 224), "none", 224, 42)  # TRC straight resize, §2.3
    images, _, _ = im.preprocess_images(str(folder), IMAGE_FILES[:2], relation)
    assert images.shape == (2, 224, 224, 3)


def test_center_crop_is_the_exact_centre_window(image_dir):
    folder, _ = image_dir
    images, _, _ = im.preprocess_images(str(folder), IMAGE_FILES, _settings("center"))
    for u, name in enumerate(IMAGE_FILES):
        source = im.decode_image_file(str(folder / name), SOURCE_HW)
        np.testing.assert_array_equal(images[u], source[88:312, 188:412])


def test_fixed_crop_is_the_seeded_window_and_repeats_in_a_second_run(image_dir):
    folder, _ = image_dir
    first, _, _ = im.preprocess_images(str(folder), IMAGE_FILES, _settings("fixed"))
    second, _, _ = im.preprocess_images(str(folder), list(reversed(IMAGE_FILES)), _settings("fixed"))
    np.testing.assert_array_equal(first, second[::-1])  # per id, whatever the order or run
    flips = []
    for u, name in enumerate(IMAGE_FILES):
        top, left, flip = im.fixed_crop_box(name, 42, SOURCE_HW, 224)
        flips.append(flip)
        source = im.decode_image_file(str(folder / name), SOURCE_HW)
        np.testing.assert_array_equal(first[u], im.apply_crop(source, top, left, flip, 224))
    boxes = {im.fixed_crop_box(n, 42, SOURCE_HW, 224) for n in IMAGE_FILES}
    assert len(boxes) == len(IMAGE_FILES)  # different ids, different windows
    assert im.fixed_crop_box("a.jpg", 43, SOURCE_HW, 224) != im.fixed_crop_box("a.jpg", 42, SOURCE_HW, 224)


def test_fixed_crop_box_is_the_same_in_another_process():
    # Another interpreter with another hash salt stands in for another host.
    code = "from data_pipeline.images import fixed_crop_box as f; print(f('17_06_4705.jpg', 42, (400, 600), 224))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == str(im.fixed_crop_box("17_06_4705.jpg", 42, SOURCE_HW, 224))


def test_random_crop_boxes_differ_between_epochs_and_repeat_per_epoch():
    a = im.random_crop_boxes(42, 0, 0, 50, SOURCE_HW, 224)
    b = im.random_crop_boxes(42, 0, 1, 50, SOURCE_HW, 224)
    again = im.random_crop_boxes(42, 0, 0, 50, SOURCE_HW, 224)
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    for x, y in zip(a, again):
        np.testing.assert_array_equal(x, y)
    tops, lefts, flips = a
    assert tops.min() >= 0 and tops.max() <= 400 - 224 and lefts.max() <= 600 - 224
    assert 0 < flips.sum() < 50


def test_missing_and_corrupt_images_become_zeros_and_are_reported(image_dir, caplog):
    folder, _ = image_dir
    ids = ["i0.jpg", CORRUPT, MISSING, "i3.bmp"]
    with caplog.at_level("WARNING", logger="data_pipeline.images"):
        images, ok, report = im.preprocess_images(str(folder), ids, _settings("fixed"))
    np.testing.assert_array_equal(ok, [True, False, False, True])
    assert report.missing_ids == [MISSING] and report.corrupt_ids == [CORRUPT]
    assert report.num_images == 4 and report.num_ok == 2 and report.fallback == "zeros"
    assert not images[1].any() and not images[2].any() and images[0].any()
    assert MISSING in caplog.text and CORRUPT in caplog.text


def test_missing_and_corrupt_images_use_the_fallback_image_with_their_own_window(image_dir):
    folder, _ = image_dir
    ids = [CORRUPT, MISSING, "i1.png"]
    images, ok, report = im.preprocess_images(str(folder), ids, _settings("fixed"), fallback_image="i4.jpg")
    np.testing.assert_array_equal(ok, [False, False, True])
    assert report.fallback == str(folder / "i4.jpg") and report.num_replaced == 2
    source = im.decode_image_file(str(folder / "i4.jpg"), SOURCE_HW)
    for u in (0, 1):
        window = im.fixed_crop_box(ids[u], 42, SOURCE_HW, 224)
        np.testing.assert_array_equal(images[u], im.apply_crop(source, *window, 224))


def test_unreadable_fallback_image_is_a_clear_error(image_dir):
    folder, _ = image_dir
    with pytest.raises(ValueError, match="fallback_image"):
        im.preprocess_images(str(folder), [MISSING], _settings("fixed"), fallback_image=CORRUPT)


def _damaged_jpegs(folder, progressive):
    """A good JPEG and a copy whose middle 64 bytes are garbage (libjpeg decodes
    the copy with a 'Corrupt JPEG data' warning and no error)."""
    import io

    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(
        buffer, "JPEG", quality=90, progressive=progressive)
    data = bytearray(buffer.getvalue())
    good, bad = f"good_{progressive}.jpg", f"garbled_{progressive}.jpg"
    (folder / good).write_bytes(bytes(data))
    middle = len(data) // 2
    # No 0xff byte in the garbage: no false marker, so libjpeg decodes every row, only warns.
    data[middle:middle + 64] = rng.integers(0, 255, 64, dtype=np.uint8).tobytes()
    (folder / bad).write_bytes(bytes(data))
    return good, bad


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_with_garbage_in_the_middle_is_unreadable(tmp_path, progressive, caplog):
    good, bad = _damaged_jpegs(tmp_path, progressive)
    tf = im.import_tf()
    assert tf.io.decode_jpeg(tf.io.read_file(str(tmp_path / bad))).shape == (120, 160, 3)  # TF alone: no error
    with caplog.at_level("WARNING", logger="data_pipeline.images"):
        images, ok, report = im.preprocess_images(str(tmp_path), [good, bad, "i.png"], _settings("center"))
    np.testing.assert_array_equal(ok, [True, False, False])
    assert report.corrupt_ids == [bad] and report.missing_ids == ["i.png"] and report.num_replaced == 2
    assert images[0].any() and not images[1].any()
    assert bad in caplog.text
    assert im.jpeg_corruption(str(tmp_path / bad)).startswith("Corrupt JPEG data")
    assert im.jpeg_corruption(str(tmp_path / good)) is None
    with pytest.raises(ValueError, match=rf"cannot read image .*{bad}: Corrupt JPEG data"):
        im.decode_image_file(str(tmp_path / bad), SOURCE_HW)
    # With a fallback image, the damaged JPEG is replaced and counted like any unreadable one.
    _, ok, report = im.preprocess_images(str(tmp_path), [bad, good], _settings("fixed"), fallback_image=good)
    np.testing.assert_array_equal(ok, [False, True])
    assert report.corrupt_ids == [bad] and report.fallback == str(tmp_path / good)


def test_other_native_stderr_output_is_passed_on(capfd):
    with im._native_stderr() as warnings:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\nsomething else\n")
    assert warnings == ["Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n"]
    assert capfd.readouterr().err == "something else\n"


def test_normalize_matches_the_numpy_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    mean, std = (0.48, 0.498, 0.531), (0.214, 0.207, 0.207)
    got = im.normalize(x, mean, std)
    want = (x.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
