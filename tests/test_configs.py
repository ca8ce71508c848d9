"""The experiment configs: the paper's settings, variants and options parse as documented."""

import pytest

from configs import text_real, twitter2015, twitter2017


def test_paper_setup_matches_the_original():
    c = twitter2015.get_config()
    assert (c.data.max_seq_length, c.optimizer.learning_rate, c.num_epochs, c.seed) == (96, 2e-5, 50, 42)
    # Effective batch 32 as 8 accumulated mini-batches of 4 (§5.3), BERTAdam, no masking.
    assert (c.batch_size, c.optimizer.grad_accum_steps) == (32, 8)
    assert c.optimizer.name == "bert_adam" and not c.model.mask_attention
    assert c.decode.logit_threshold == 8.0
    assert twitter2017.get_config().data.name == "twitter2017"


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


def test_text_real_numeric_options():
    c = text_real.get_config("twitter2017,epochs=5,lr=1.5e-4,threshold=6")
    assert (c.num_epochs, c.optimizer.learning_rate, c.decode.logit_threshold) == (5, 1.5e-4, 6.0)


@pytest.mark.parametrize("arg, message", [
    ("twitter2016", "unknown dataset"),
    ("twitter2015,sed=1", "unknown option 'sed'"),
    ("twitter2015,fixd", "unknown option 'fixd'"),
])
def test_text_real_rejects_typos(arg, message):
    with pytest.raises(ValueError, match=message):
        text_real.get_config(arg)
