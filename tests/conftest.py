import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ptb_path():
    """The real corpus, from the environment variable PTB_DATA (.ci/run sets it)."""
    path = os.environ.get("PTB_DATA")
    if not path:
        pytest.skip("PTB_DATA is not set: export PTB_DATA=folder/with/ptb.train.txt to run this test")
    return path


def write_corpus(folder, train, valid=None, test=None):
    """Writes ptb.{train,valid,test}.txt into `folder`; valid and test default to train."""
    os.makedirs(folder, exist_ok=True)
    valid = train if valid is None else valid
    test = train if test is None else test
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        with open(os.path.join(folder, f"ptb.{split}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    return str(folder)
