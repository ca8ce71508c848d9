"""The experiment configs: the paper's settings, and one argument language for every config file."""

import importlib
import pathlib
import re

import pytest

from configs import args, demo, text_real, trc_relation, twitter, twitter2015, twitter2017
from configs.args import Positional, parse_config_arg

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every config file (a get_config), the flags it documents, and what must precede an option.
CONFIG_FILES = {
    "demo": ("text_only",),
    "twitter2015": twitter.FLAGS,
    "twitter2017": twitter.FLAGS,
    "trc_relation": ("full", "text_only", "minilm", "fast_lr", "original_init", "sample"),
    "text_real": ("fixed", "adamw", "mask"),
}
PREFIX = {"text_real": "twitter2015,"}


def test_every_config_file_is_covered():
    found = {p.stem for p in (REPO / "configs").glob("*.py") if "def get_config" in p.read_text()}
    assert found == set(CONFIG_FILES)


def test_paper_setup_matches_the_original():
    c = twitter2015.get_config()
    assert (c.data.max_seq_length, c.optimizer.learning_rate, c.num_epochs, c.seed) == (96, 2e-5, 50, 42)
    # Effective batch 32 as 8 accumulated mini-batches of 4 (§5.3), BERTAdam, no masking.
    assert (c.batch_size, c.optimizer.grad_accum_steps) == (32, 8)
    assert c.optimizer.name == "bert_adam" and not c.model.mask_attention
    assert c.decode.logit_threshold == 8.0
    assert twitter2017.get_config().data.name == "twitter2017"
    # The trainer decides which parameters are frozen, from the model.
    assert "frozen_prefixes" not in c.optimizer


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_unknown_option_fails_the_same_way_everywhere(name):
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError) as e:
        module.get_config(PREFIX.get(name, "") + "nope")
    message = str(e.value)
    assert message.startswith(f"unknown option 'nope' for configs/{name}.py; valid: "), message
    valid = message.split("; valid: ", 1)[1].split(", ")
    assert set(CONFIG_FILES[name]) <= set(valid)


@pytest.mark.parametrize("name, flag", [(n, f) for n, flags in sorted(CONFIG_FILES.items()) for f in flags])
def test_each_documented_flag_parses_and_changes_the_config(name, flag):
    module = importlib.import_module(f"configs.{name}")
    assert re.search(rf"\b{flag}\b", module.__doc__), f"configs/{name}.py does not document {flag!r}"
    default = module.get_config(PREFIX.get(name, "").rstrip(",") or None).to_dict()
    assert module.get_config(PREFIX.get(name, "") + flag).to_dict() != default


def test_removed_variants_are_rejected():
    with pytest.raises(ValueError, match="unknown option 'cached_features' for configs/twitter2015.py"):
        twitter2015.get_config("cached_features")


@pytest.mark.parametrize(
    "arg, optimizer, masked",
    [("", "bert_adam", False), ("fixed", "adamw_fixed", True),
     ("adamw", "adamw_fixed", False), ("mask", "bert_adam", True)],
)
def test_text_real_switches(arg, optimizer, masked):
    c = text_real.get_config(",".join(["twitter2015", "seed=2", arg]))
    assert (c.optimizer.name, c.model.mask_attention) == (optimizer, masked)
    assert not c.model.use_images and c.model.bert == "minilm-l6"
    assert (c.seed, c.data.shuffle_seed) == (2, 2)


def test_text_real_settings_and_defaults():
    c = text_real.get_config("twitter2017,epochs=5,lr=1.5e-4,threshold=6")
    assert (c.num_epochs, c.optimizer.learning_rate, c.decode.logit_threshold) == (5, 1.5e-4, 6.0)
    assert c.data.name == "twitter2017"
    d = text_real.get_config()
    assert d.data.name == "twitter2015"
    assert (d.seed, d.num_epochs, d.optimizer.learning_rate, d.decode.logit_threshold) == (1, 3, 5e-5, 8.0)


@pytest.mark.parametrize("arg, message", [
    ("twitter2016", "unknown dataset 'twitter2016' for configs/text_real.py; valid: twitter2015, twitter2017"),
    ("seed=2", "unknown dataset 'seed=2' for configs/text_real.py"),  # the dataset comes first
    ("twitter2015,sed=1", "unknown option 'sed' for configs/text_real.py; valid: fixed, adamw, mask, "
                          "seed=<int>, epochs=<int>, lr=<float>, threshold=<float>"),
    ("twitter2015,fixd", "unknown option 'fixd' for configs/text_real.py"),
    ("twitter2015,seed=one", "option seed='one' for configs/text_real.py: not a int"),
    ("twitter2015,epochs=2.5", "option epochs='2.5' for configs/text_real.py: not a int"),
    ("twitter2015,seed=1,seed=2", "option 'seed' given twice for configs/text_real.py"),
    ("twitter2015,seed", "option 'seed' for configs/text_real.py needs a value: seed=<int>"),
    ("twitter2015,fixed=1", "option 'fixed' for configs/text_real.py is a flag and takes no value"),
])
def test_text_real_rejects_mistakes(arg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        text_real.get_config(arg)


def test_text_real_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("JML_DATA_ROOT", str(tmp_path))
    (tmp_path / "twitter2015").mkdir()
    (tmp_path / "twitter2015" / "test.json").write_text("[]")
    c = text_real.get_config("twitter2015")
    assert c.data.train_file == str(tmp_path / "twitter2015" / "train.json")
    assert c.data.test_file == str(tmp_path / "twitter2015" / "test.json") and c.eval_splits == ("dev", "test")
    c17 = text_real.get_config("twitter2017")  # no test.json: dev only
    assert c17.data.test_file is None and c17.eval_splits == ("dev",)
    monkeypatch.delenv("JML_DATA_ROOT")
    c = text_real.get_config("twitter2017")
    assert c.data.dev_file == str(REPO / "data" / "twitter2017" / "dev.json")


def test_trc_relation_variants_compose():
    c = trc_relation.get_config("original_init,sample,minilm")
    # sample applies first, whatever the order given; original_init loads no BERT weights.
    assert c.model.bert == "minilm-l6" and c.model.bert_init is None and c.relation.original_layernorm_init
    assert c.data.train_file.endswith("data/sample/trc.json")
    assert trc_relation.get_config("minilm,sample,original_init").to_dict() == c.to_dict()  # order-free


def test_twitter_variants():
    c = twitter2015.get_config("text_only,minilm,bf16")
    assert not c.model.use_images and c.model.relation_init is None and c.data.image_dir is None
    assert (c.model.bert, c.data.vocab_file, c.model.dtype) == ("minilm-l6", "minilm", "bfloat16")
    assert demo.get_config("text_only").data.image_dir is None


def test_parse_config_arg():
    parsed = parse_config_arg(" a , k=3,, b ", config="configs/x.py", flags=("a", "b", "c"),
                              settings={"k": 1, "s": "x", "on": False})
    assert parsed.flags == {"a", "b"} and parsed.settings == {"k": 3, "s": "x", "on": False}
    assert parsed.positional is None
    assert parse_config_arg("on=true,s=y", config="configs/x.py", settings={"s": "x", "on": False}).settings == {
        "s": "y", "on": True}
    assert parse_config_arg(None, config="configs/x.py").flags == frozenset()
    with pytest.raises(ValueError, match=re.escape(
            "unknown option 'a' for configs/x.py; valid: none (this config takes no argument)")):
        parse_config_arg("a", config="configs/x.py")
    pos = Positional("dataset", ("d1", "d2"), default="d1")
    assert parse_config_arg("", config="configs/x.py", positional=pos).positional == "d1"
    assert parse_config_arg("d2,f", config="configs/x.py", flags=("f",), positional=pos).positional == "d2"
    assert args.config_name("/any/where/configs/demo.py") == "configs/demo.py"
