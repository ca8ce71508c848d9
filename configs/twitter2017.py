"""JML on Twitter-2017, the paper's setup (original-jml-code.md §8).

    python -m launch.train --config=configs/twitter2017.py --workdir=workdirs/t17

Data files default to ``data/twitter2017/{train,dev,test}.json`` and
``data/twitter2017/images``; see configs/twitter.py for the variants.
"""

from configs.twitter import twitter_config


def get_config(arg: str | None = None):
    return twitter_config("twitter2017", "data/twitter2017", 54, arg)
