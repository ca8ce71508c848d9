"""JML on Twitter-2015, the paper's setup (original-jml-code.md §8).

    python -m launch.train --config=configs/twitter2015.py --workdir=workdirs/t15 \
        --config.data.train_file=data/twitter2015/train.json ...

Data files default to ``data/twitter2015/{train,dev,test}.json`` and
``data/twitter2015/images``. Variants, comma-separated after the colon
(``--config=configs/twitter2015.py:text_only,minilm``; see configs/twitter.py):
text_only, minilm, fixed, no_relation, no_relation_mate, no_relation_masc,
hard_gate, no_mate_vision, no_masc_vision, bf16.
"""

from configs.args import config_name, parse_config_arg
from configs.twitter import FLAGS, twitter_config


def get_config(arg: str | None = None):
    flags = parse_config_arg(arg, config=config_name(__file__), flags=FLAGS).flags
    return twitter_config("twitter2015", "data/twitter2015", 65, flags)
