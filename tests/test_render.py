"""tools/render.py: case-study PNGs of prediction records (launch.predict --render)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tools import render

REPO_ROOT = render.pathlib.Path(__file__).resolve().parents[1]


def _aspect(start, end, polarity, prob=0.9):
    return {"word_start": start, "word_end": end, "polarity": polarity, "polarity_prob": prob}


def _colours(path):
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}


@pytest.fixture()
def records(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(images / "a.jpg")
    words = "RT @user : Great game by Lionel Messi tonight but the referee was awful".split()
    return images, [
        {"id": "a", "words": words, "image": "a.jpg", "p_text_represented": 0.7, "p_image_adds": 0.35,
         "aspects": [_aspect(6, 7, "positive"), _aspect(11, 11, "negative", 0.6)]},
        {"id": "b/c", "words": ["Northwind", "merger", "talks", "collapse"], "image": "missing.jpg",
         "p_text_represented": 0.2, "p_image_adds": 0.9, "aspects": [_aspect(0, 0, "neutral")]},
        {"words": ["nothing", "here"], "aspects": []},  # text-only model, no aspect
    ]


def test_one_png_per_record_with_polarity_colours(records, tmp_path):
    images, recs = records
    paths = render.render_case_studies(recs, tmp_path / "figs", image_dir=str(images))
    assert len(paths) == 3 and sorted(p.name for p in (tmp_path / "figs").glob("*.png")) == [
        "0000_a.png", "0001_b_c.png", "0002.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width == render.WIDTH and im.height >= render.IMAGE_BOX
    c0, c1, c2 = (_colours(p) for p in paths)
    pos, neg, neu = (render.POLARITY_COLOURS[k] for k in ("positive", "negative", "neutral"))
    assert {pos, neg} <= c0 and neu not in c0
    assert neu in c1 and pos not in c1 and neg not in c1
    assert not {pos, neg, neu} & c2
    # The real image is drawn (many colours); a missing one and a text-only
    # record get the grey placeholder.
    assert len(c0) > 1000 and len(c1) < 1000
    probe = (render.MARGIN + 5, render.MARGIN + render.IMAGE_BOX // 2)  # left middle of the image panel
    grey = [Image.open(p).convert("RGB").getpixel(probe) == render.PLACEHOLDER_GREY for p in paths]
    assert grey == [False, True, True]


def test_long_sentences_wrap_into_a_taller_picture(tmp_path):
    words = [f"word{i}" for i in range(200)]
    short = render.render_record({"words": words[:5], "aspects": []}, tmp_path / "s.png")
    tall = render.render_record({"words": words, "aspects": [_aspect(150, 151, "negative")]}, tmp_path / "t.png")
    with Image.open(short) as a, Image.open(tall) as b:
        assert b.height > a.height
    assert render.POLARITY_COLOURS["negative"] in _colours(tall)


def test_resolve_image(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    assert render.resolve_image("x.png", str(tmp_path)) == tmp_path / "x.png"
    assert render.resolve_image(str(tmp_path / "x.png"), "/elsewhere") == tmp_path / "x.png"
    assert render.resolve_image("y.png", str(tmp_path)) is None
    assert render.resolve_image(None, str(tmp_path)) is None


def test_import_jml_jax_does_not_load_pil():
    code = "import sys, jml_jax, tools.render; assert 'PIL' not in sys.modules, 'PIL imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_launch_predict_renders(tmp_path):
    """launch.predict --render on a text-only demo run trained for two steps."""
    from configs.demo import get_config
    from jml_jax.train import train_and_evaluate
    from launch import common

    config = get_config("text_only")
    config.max_steps = 2
    config.eval_splits = ("dev",)
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir, common.train_data(config), common.eval_splits(config, ["dev"]))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"text": "RT @user : Great game by Messi", "id": "a"},
        {"words": ["Northwind", "merger", "talks", "collapse"]},
    ]) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.predict", "--config=configs/demo.py:text_only", f"--workdir={workdir}",
         f"--input={src}", f"--output={tmp_path / 'out.jsonl'}", f"--render={tmp_path / 'figs'}",
         "--checkpoint=latest", "--config.decode.logit_threshold=-10000"],
        cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert [p.name for p in pngs] == ["0000_a.png", "0001.png"]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for path, record in zip(pngs, records):
        colours = _colours(path)
        for a in record["aspects"]:
            assert render.POLARITY_COLOURS[a["polarity"]] in colours
