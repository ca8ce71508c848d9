"""The data downloader: checksums, fetch from a mirror, and the raw -> canonical JSON conversion."""

import json
import shutil

import pytest

from conftest import REPO_ROOT
from data_pipeline import download
from data_pipeline.readers import read_examples, read_json, read_trc

FORMATS_DIR = REPO_ROOT / "tests" / "fixtures" / "formats"
TRC_CSV = ('"tweet_id","user_id","tweet","text_is_represented","image_adds","image_adds_text_repr",'
           '"image_adds_text_notrepr","image_notadds_text_repr","image_notadds_text_notrepr"\n'
           '"11","1","Sunset over the bay https://t.co/abc","1","1","1","0","0","0"\n'
           '"12","2","new shoes! \\"finally\\" https://t.co/x https://t.co/y","0","1","0","1","0","0"\n')


def _content(examples):
    return [(ex.words, ex.aspects, ex.image_id) for ex in examples]


def _raw_folder(tmp_path):
    """A raw folder laid out as fetch writes it, from local files, and releases
    that describe those files (their real sha256)."""
    raw = tmp_path / "raw"
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv = tmp_path / "textimage-data.csv"
    csv.write_text(TRC_CSV, encoding="utf-8")
    releases = []
    for release in download.RELEASES:
        source = csv if release.path.endswith(".csv") else FORMATS_DIR / "sample.tsv"
        dest = raw / release.raw_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        releases.append(download.Release(release.repository, release.commit, release.path,
                                         download.sha256_file(dest), release.output))
    return raw, releases


def test_releases_cover_the_layout_the_configs_read():
    outputs = sorted(r.output for r in download.RELEASES)
    assert outputs == sorted([f"twitter{y}/{s}.json" for y in (2015, 2017) for s in ("train", "dev", "test")]
                             + ["trc/trc.json"])
    assert all(len(r.sha256) == 64 and len(r.commit) == 40 for r in download.RELEASES)
    assert download.RELEASES[0].url() == ("https://raw.githubusercontent.com/jefferyYu/TomBERT/"
                                          "31bc79fb9a913a2480d5a56ffe5009d986d6eb2a/absa_data/twitter2015/train.tsv")


def test_convert_writes_the_canonical_json(tmp_path):
    raw, releases = _raw_folder(tmp_path)
    counts = download.convert(raw, tmp_path / "data", releases)
    assert counts == {**{f"twitter{y}/{s}.json": 5 for y in (2015, 2017) for s in ("train", "dev", "test")},
                      "trc/trc.json": 2}
    reference = read_json(FORMATS_DIR / "sample.json")
    for name in ("twitter2015/train.json", "twitter2017/test.json"):
        written = tmp_path / "data" / name
        assert _content(read_examples(written)) == _content(reference)
        records = json.loads(written.read_text(encoding="utf-8"))
        originals = json.loads((FORMATS_DIR / "sample.json").read_text(encoding="utf-8"))
        assert [{k: r[k] for k in ("words", "image_id", "aspects")} for r in originals] == records
    trc = read_trc(tmp_path / "data" / "trc" / "trc.json")
    assert [(ex.words, ex.image_id, ex.text_represented, ex.image_adds) for ex in trc] == [
        (("Sunset", "over", "the", "bay"), "T11.jpg", 1, 1),
        (("new", "shoes!", '\\"finally\\"', "https://t.co/x"), "T12.jpg", 0, 1)]
    assert (tmp_path / "data" / "trc" / "textimage-data.csv").read_text(encoding="utf-8") == TRC_CSV


def test_convert_refuses_a_checksum_mismatch_naming_the_file(tmp_path):
    raw, releases = _raw_folder(tmp_path)
    damaged = raw / releases[2].raw_name
    damaged.write_text(damaged.read_text(encoding="utf-8").replace("Messi", "Mesi"), encoding="utf-8")
    with pytest.raises(download.ChecksumError, match=rf"{damaged}: sha256 [0-9a-f]{{64}} is not the published "
                                                     rf"{releases[2].sha256}"):
        download.convert(raw, tmp_path / "data", releases)
    (raw / releases[0].raw_name).unlink()
    with pytest.raises(FileNotFoundError, match=r"raw/TomBERT/absa_data/twitter2015/train.tsv is missing"):
        download.convert(raw, tmp_path / "data", releases)


def test_fetch_from_a_mirror_checks_and_keeps_files(tmp_path):
    mirror_raw, releases = _raw_folder(tmp_path / "src")
    mirror = tmp_path / "mirror"
    for release in releases:
        dest = mirror / release.repository / release.commit / release.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror_raw / release.raw_name, dest)
    paths = download.fetch(tmp_path / "raw", releases, mirror=mirror.as_uri())
    assert [p.read_bytes() for p in paths] == [(mirror_raw / r.raw_name).read_bytes() for r in releases]
    download.fetch(tmp_path / "raw", releases, mirror="file:///nonexistent")  # all present: nothing fetched

    wrong = [download.Release(r.repository, r.commit, r.path, "0" * 64, r.output) for r in releases[:1]]
    with pytest.raises(download.ChecksumError, match=r"twitter2015/train.tsv -> .*train.tsv.part: sha256"):
        download.fetch(tmp_path / "other", wrong, mirror=mirror.as_uri())
    assert not (tmp_path / "other" / wrong[0].raw_name).exists()  # a bad download never looks complete
    with pytest.raises(download.ChecksumError, match=r"raw/TomBERT/absa_data/twitter2015/train.tsv: sha256"):
        download.fetch(tmp_path / "raw", wrong, mirror=mirror.as_uri())


def test_main_fetches_and_converts(tmp_path, monkeypatch, capsys):
    mirror_raw, releases = _raw_folder(tmp_path / "src")
    mirror = tmp_path / "mirror"
    for release in releases:
        dest = mirror / release.repository / release.commit / release.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror_raw / release.raw_name, dest)
    monkeypatch.setattr(download, "RELEASES", tuple(releases))
    download.main(["--out", str(tmp_path / "data"), "--mirror", mirror.as_uri()])
    assert (tmp_path / "data" / "twitter2017" / "dev.json").is_file()
    assert (tmp_path / "data" / "raw" / "TomBERT" / "absa_data" / "twitter" / "dev.tsv").is_file()
    assert f"JML_DATA_ROOT={(tmp_path / 'data').resolve()}" in capsys.readouterr().out


# ------------------------------------------------------------------- real data
def _tombert_tsv(records) -> str:
    """Canonical JSON records -> the TomBERT per-aspect TSV (test-only writer):
    a header, then per sentence one row per aspect, in aspect order."""
    label = {"NEG": "0", "NEU": "1", "POS": "2"}
    rows, index = ["index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"], 0
    for r in records:
        for a in r["aspects"]:
            words = r["words"][:a["from"]] + ["$T$"] + r["words"][a["to"]:]
            rows.append(f"{index}\t{label[a['polarity']]}\t{r['image_id']}\t{' '.join(words)}\t"
                        f"{' '.join(r['words'][a['from']:a['to']])}")
            index += 1
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("name", ["twitter2015/train.json", "twitter2015/dev.json", "twitter2015/test.json",
                                  "twitter2017/train.json", "twitter2017/dev.json"])
def test_real_tsv_round_trips_to_the_canonical_json(real_data_dir, tmp_path, name):
    records = json.loads((real_data_dir / name).read_text(encoding="utf-8"))
    tsv = tmp_path / "split.tsv"
    tsv.write_text(_tombert_tsv(records), encoding="utf-8")
    converted = [download.example_to_json(e) for e in read_examples(tsv)]
    assert converted == [{k: r[k] for k in ("words", "image_id", "aspects")} for r in records]
