"""JML on Twitter-2015, the paper's setup (original-jml-code.md §8).

    python -m launch.train --config=configs/twitter2015.py --workdir=workdirs/t15 \
        --config.data.train_file=data/twitter2015/train.json ...

Data files default to ``data/twitter2015/{train,dev,test}.json`` and
``data/twitter2015/images``; see configs/twitter.py for the variants
(e.g. ``--config=configs/twitter2015.py:text_only,minilm``).
"""

from configs.twitter import twitter_config


def get_config(arg: str | None = None):
    return twitter_config("twitter2015", "data/twitter2015", 65, arg)
