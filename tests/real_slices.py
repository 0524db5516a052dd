"""Small slices of the real YOOCHOOSE click log, shared by the model tests."""

from functools import lru_cache

from training.data.click_log import EncodedSplit
from training.data.datasets import load_dataset


@lru_cache(maxsize=4)
def yoochoose_slice(train_sessions: int = 3000, test_sessions: int = 300):
    """(train Sessions, test Sessions, item map, popularity) from the first sessions of the real slice."""
    train_log, test_log = load_dataset("yoochoose_rsc15_100k")
    train_log, test_log = train_log.head_sessions(train_sessions), test_log.head_sessions(test_sessions)
    split = EncodedSplit.of(train_log, test_log)
    return split.train, split.test, split.item_map, split.popularity

