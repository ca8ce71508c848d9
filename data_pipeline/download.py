"""Fetches the public annotation releases and writes the canonical JSON layout.

    python -m data_pipeline.download --out data/

writes what the configs read:

    data/twitter2015/{train,dev,test}.json   Twitter-2015 (TomBERT release)
    data/twitter2017/{train,dev,test}.json   Twitter-2017 (TomBERT release)
    data/trc/trc.json                        TRC (Vempala & Preotiuc-Pietro 2019)
    data/trc/textimage-data.csv              the TRC CSV as released
    data/raw/...                             the downloaded files, kept

Two steps, usable alone: `fetch` downloads every file of `RELEASES` from a
pinned commit and checks its sha256 (a mismatch is refused, naming the file);
`convert` reads the raw files with the project's readers (the TomBERT
per-aspect TSVs, the TRC CSV) and writes the JSON. `--raw_dir DIR --no_fetch`
converts copies you already have. `--mirror` replaces the GitHub raw host
(e.g. a `file://` folder laid out as `<repository>/<commit>/<path>`).

The tweet images are not part of these releases; their authors distribute
them separately (see the README's data section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import urllib.request

from data_pipeline.reader_common import sha256_file
from data_pipeline.readers import read_trc_csv, read_tsv

logger = logging.getLogger(__name__)

GITHUB_RAW = "https://raw.githubusercontent.com"
TOMBERT = ("jefferyYu/TomBERT", "31bc79fb9a913a2480d5a56ffe5009d986d6eb2a")
TRC = ("danielpreotiuc/text-image-relationship", "d2cc30f25495b724218ee741bf2a3fcb3edd2d32")


@dataclasses.dataclass(frozen=True)
class Release:
    """One public file: where it is, its checksum, and the JSON it becomes."""

    repository: str
    commit: str
    path: str
    sha256: str
    output: str  # relative to --out

    def url(self, mirror: str = GITHUB_RAW) -> str:
        return f"{mirror.rstrip('/')}/{self.repository}/{self.commit}/{self.path}"

    @property
    def raw_name(self) -> str:
        """Where the file is kept under the raw folder."""
        return f"{self.repository.split('/')[1]}/{self.path}"


def _tombert(folder: str, dataset: str, split: str, sha256: str) -> Release:
    return Release(*TOMBERT, f"absa_data/{folder}/{split}.tsv", sha256, f"{dataset}/{split}.json")


RELEASES = (
    _tombert("twitter2015", "twitter2015", "train", "ae0877588f155de80fc8858513e881562795fe644b59c808d31af3ded06f31fd"),
    _tombert("twitter2015", "twitter2015", "dev", "cb0321455406ff7d41e191724d8f8b5507695fc6b9e35e117ab006f962a2aebe"),
    _tombert("twitter2015", "twitter2015", "test", "60ffbf389c6adf12425af5199821890b17a15e4544a8557a6f5f34051ec62f2a"),
    _tombert("twitter", "twitter2017", "train", "27e16edea003f117d26074c83c7128c659d126c5f5821fa0140ba8f24ddfff09"),
    _tombert("twitter", "twitter2017", "dev", "ff2120a17c29dd95cf53a325341ea852738fbb9dd934de1fcd060666ae1452e5"),
    _tombert("twitter", "twitter2017", "test", "aec7b69e5ac43b7d7bfa9e4804aa5b99cb4d43d3ebc92f3fdc77450129fbbfed"),
    Release(*TRC, "textimage-data.csv", "4258a5f4830b27589f6d8fe30294a7b3e54f563756f6f146177ee7f074975519",
            "trc/trc.json"),
)


class ChecksumError(ValueError):
    """A raw file's sha256 is not the published one."""




def verify(path, expected: str) -> None:
    """Raises ChecksumError naming the file when its sha256 is not `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} is not the published {expected}; the file is damaged or "
                            "another version; delete it and download again")


def fetch(raw_dir, releases=None, mirror: str = GITHUB_RAW, timeout: float = 60.0) -> list[pathlib.Path]:
    """Downloads each release into raw_dir (kept when already there and intact).

    A download is written to '<name>.part' and renamed only after its sha256
    matched, so an interrupted or wrong download never looks complete.
    """
    raw_dir = pathlib.Path(raw_dir)
    paths = []
    for release in RELEASES if releases is None else releases:
        dest = raw_dir / release.raw_name
        paths.append(dest)
        if dest.exists():
            verify(dest, release.sha256)
            logger.info("have %s", dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        url = release.url(mirror)
        logger.info("fetching %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        try:
            verify(part, release.sha256)
        except ChecksumError as e:
            raise ChecksumError(f"{url} -> {e}") from None
        os.replace(part, dest)
    return paths


def example_to_json(example) -> dict:
    """A canonical Example -> the sentence-level JSON record (`to` exclusive)."""
    short = {"positive": "POS", "neutral": "NEU", "negative": "NEG"}
    return {
        "words": list(example.words),
        "image_id": example.image_id,
        "aspects": [{"from": a.start, "to": a.end + 1, "polarity": short[a.polarity],
                     "term": list(example.words[a.start:a.end + 1])} for a in example.aspects],
    }


def relation_to_json(example) -> dict:
    return {"words": list(example.words), "image_id": example.image_id,
            "ifpairs": [example.text_represented, example.image_adds]}


def write_json_records(path, records) -> None:
    """One JSON array, one record per line, UTF-8 (the layout of data/sample)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
    os.replace(tmp, path)


def convert(raw_dir, out_dir, releases=None, check: bool = True) -> dict[str, int]:
    """Raw release files -> canonical JSON under out_dir.

    Returns:
      {output path relative to out_dir: number of records written}.
    """
    raw_dir, out_dir = pathlib.Path(raw_dir), pathlib.Path(out_dir)
    counts = {}
    for release in RELEASES if releases is None else releases:
        source = raw_dir / release.raw_name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing (fetch it first, or pass the folder that holds it)")
        if check:
            verify(source, release.sha256)
        if release.path.endswith(".csv"):
            records = [relation_to_json(e) for e in read_trc_csv(source)]
            folder = (out_dir / release.output).parent
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / source.name)  # the CSV as released, for data.format=trc_csv
        else:
            records = [example_to_json(e) for e in read_tsv(source)]
        write_json_records(out_dir / release.output, records)
        counts[release.output] = len(records)
        logger.info("wrote %s (%d records)", out_dir / release.output, len(records))
    return counts


def main(argv=None):
    """`python -m data_pipeline.download --out data/`: fetch, check, convert."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for twitter2015/ twitter2017/ trc/")
    p.add_argument("--raw_dir", help="folder for the downloaded files (default: <out>/raw)")
    p.add_argument("--no_fetch", action="store_true", help="convert the files already in --raw_dir")
    p.add_argument("--mirror", default=GITHUB_RAW, help="base URL laid out as <repository>/<commit>/<path>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw_dir = pathlib.Path(args.raw_dir or pathlib.Path(args.out) / "raw")
    if not args.no_fetch:
        fetch(raw_dir, mirror=args.mirror)
    counts = convert(raw_dir, args.out)
    for name, n in counts.items():
        print(f"{pathlib.Path(args.out) / name}: {n}")
    print(f"point the tests at it with JML_DATA_ROOT={pathlib.Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
