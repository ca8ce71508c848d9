"""Case-study pictures of predictions, like the paper's Figure 3.

    python -m launch.predict --config=... --workdir=DIR --input=IN.jsonl \\
        --output=OUT.jsonl --render=FIGDIR

`render_case_studies(records, out_dir, image_dir=...)` draws one PNG per
prediction record (the output of `jml_jax.predict.predict`): the tweet's image
on the left (the whole image, scaled to fit; the model itself saw the
evaluation crop of the config), or a grey placeholder for a text-only model or
a missing file; on the right the sentence with each predicted aspect span
filled in its polarity's colour and tagged with the polarity and its
probability, the list of aspects, and the relation module's P(image adds) (the
gate of both heads, §2.5) with P(text represented).

PIL is imported inside the functions, so importing this module does not need it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Sequence

# Fill colours of aspect spans per polarity (RGB); the tests look for them.
POLARITY_COLOURS = {
    "positive": (44, 160, 44),
    "negative": (214, 39, 40),
    "neutral": (31, 119, 180),
    "other": (148, 103, 189),
}
POLARITY_TAGS = {"positive": "Pos", "negative": "Neg", "neutral": "Neu", "other": "Other"}
PLACEHOLDER_GREY = (200, 200, 200)
WIDTH, MARGIN, IMAGE_BOX, GAP = 1000, 16, 320, 20
TEXT, MUTED, BACKGROUND = (20, 20, 20), (110, 110, 110), (255, 255, 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def resolve_image(image: str | None, image_dir: str | None) -> pathlib.Path | None:
    """The file of a record's ``image`` as `jml_jax.predict` reads it (an
    absolute path, or a name inside ``image_dir``); None when there is none."""
    if not image:
        return None
    path = pathlib.Path(os.path.join(image_dir or "", image))
    return path if path.is_file() else None


def _image_panel(path: pathlib.Path | None, text_only: bool):
    """[IMAGE_BOX, IMAGE_BOX] RGB panel: the image scaled to fit, or a grey placeholder."""
    from PIL import Image, ImageDraw

    panel = Image.new("RGB", (IMAGE_BOX, IMAGE_BOX), BACKGROUND)
    picture = None
    if path is not None:
        try:
            with Image.open(path) as im:
                picture = im.convert("RGB")
            scale = IMAGE_BOX / max(picture.size)
            picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
        except OSError:
            picture = None
    if picture is not None:
        panel.paste(picture, ((IMAGE_BOX - picture.width) // 2, (IMAGE_BOX - picture.height) // 2))
        return panel
    draw = ImageDraw.Draw(panel)
    draw.rectangle([0, 0, IMAGE_BOX - 1, IMAGE_BOX - 1], fill=PLACEHOLDER_GREY)
    label = "text only" if text_only else "no image"
    font = _font(18)
    w = draw.textlength(label, font=font)
    draw.text(((IMAGE_BOX - w) / 2, IMAGE_BOX / 2 - 10), label, fill=MUTED, font=font)
    return panel


def _layout_sentence(draw, words: Sequence[str], aspects: Sequence[dict], x0: int, y0: int, width: int,
                     font, tag_font, line_height: int) -> list[tuple]:
    """Draw operations of the wrapped sentence, in order: ('box', xy, colour)
    behind each aspect word, ('text', xy, string, colour, font); the last one
    is ('end', y below the text)."""
    colour_of: dict[int, tuple] = {}
    tag_after: dict[int, str] = {}
    for a in aspects:
        colour = POLARITY_COLOURS.get(a["polarity"], POLARITY_COLOURS["other"])
        for w in range(int(a["word_start"]), int(a["word_end"]) + 1):
            colour_of[w] = colour
        prob = a.get("polarity_prob")
        tag = POLARITY_TAGS.get(a["polarity"], a["polarity"])
        tag_after[int(a["word_end"])] = f"{tag} {prob:.2f}" if prob is not None else tag
    ops: list[tuple] = []
    x, y = x0, y0
    space = draw.textlength(" ", font=font)
    for i, word in enumerate(words):
        w = draw.textlength(word, font=font)
        tag = tag_after.get(i)
        tw = draw.textlength(tag, font=tag_font) + 6 if tag else 0
        if x > x0 and x + w + tw > x0 + width:
            x, y = x0, y + line_height
        if i in colour_of:
            ops.append(("box", [x - 2, y - 2, x + w + 2, y + line_height - 8], colour_of[i]))
            ops.append(("text", (x, y), word, BACKGROUND, font))
        else:
            ops.append(("text", (x, y), word, TEXT, font))
        x += w
        if tag:
            ops.append(("text", (x + 4, y + 4), tag, colour_of[i], tag_font))
            x += tw
        x += space
    ops.append(("end", y + line_height))
    return ops


def render_record(record: dict, path: str | pathlib.Path, *, image_dir: str | None = None) -> pathlib.Path:
    """One case-study PNG of a prediction record (`jml_jax.predict` output)."""
    from PIL import Image, ImageDraw

    path = pathlib.Path(path)
    words = list(record["words"])
    aspects = list(record.get("aspects", record.get("predicted", [])))
    text_only = "p_image_adds" not in record
    panel = _image_panel(resolve_image(record.get("image"), image_dir), text_only)

    font, small, tag_font = _font(20), _font(15), _font(13)
    x0 = MARGIN + IMAGE_BOX + GAP
    width = WIDTH - x0 - MARGIN
    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    title = str(record.get("id", record.get("example_id", "")))
    y = MARGIN + (24 if title else 0)
    ops = _layout_sentence(scratch, words, aspects, x0, y, width, font, tag_font, line_height=32)
    y = ops[-1][1] + 10
    lines: list[tuple[str, tuple]] = []
    if not aspects:
        lines.append(("no aspect predicted", MUTED))
    for a in aspects:
        text = a.get("text") or " ".join(words[int(a["word_start"]): int(a["word_end"]) + 1])
        prob = a.get("polarity_prob")
        lines.append((f"{text}: {a['polarity']}" + (f" ({prob:.2f})" if prob is not None else ""),
                      POLARITY_COLOURS.get(a["polarity"], POLARITY_COLOURS["other"])))
    relation_y = y + 22 * len(lines) + 10
    height = max(MARGIN + IMAGE_BOX, relation_y + 60) + MARGIN

    canvas = Image.new("RGB", (WIDTH, height), BACKGROUND)
    canvas.paste(panel, (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((x0, MARGIN), title, fill=MUTED, font=small)
    for op in ops[:-1]:
        if op[0] == "box":
            draw.rectangle(op[1], fill=op[2])
        else:
            draw.text(op[1], op[2], fill=op[3], font=op[4])
    for i, (text, colour) in enumerate(lines):
        draw.text((x0, y + 22 * i), text, fill=colour, font=small)
    if text_only:
        draw.text((x0, relation_y), "text-only model: no relation gate", fill=MUTED, font=small)
    else:
        p_v, p_r = float(record["p_image_adds"]), float(record.get("p_text_represented", float("nan")))
        draw.text((x0, relation_y), f"P(image adds) = {p_v:.2f}   P(text represented) = {p_r:.2f}",
                  fill=TEXT, font=small)
        bar_y, bar_w = relation_y + 26, 240
        draw.rectangle([x0, bar_y, x0 + bar_w, bar_y + 12], outline=MUTED)
        draw.rectangle([x0, bar_y, x0 + round(bar_w * min(max(p_v, 0.0), 1.0)), bar_y + 12], fill=MUTED)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:60].strip("_")


def render_case_studies(records: Sequence[dict], out_dir: str | pathlib.Path, *,
                        image_dir: str | None = None) -> list[pathlib.Path]:
    """One PNG per record in ``out_dir``: ``<index>[_<id>].png`` in input order."""
    out = pathlib.Path(out_dir)
    paths = []
    for i, record in enumerate(records):
        ident = _safe(record.get("id", record.get("example_id", "")))
        paths.append(render_record(record, out / (f"{i:04d}_{ident}.png" if ident else f"{i:04d}.png"),
                                   image_dir=image_dir))
    return paths
