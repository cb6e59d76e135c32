import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The environment every test runs in, and every program a test starts inherits: the same whatever the caller's shell
# exports, so that no test passes or fails by it. TensorFlow's log levels (at 2, its C++ error lines would join the
# one-line errors the tests read), its cluster and numerics switches, and the locale (the programs read and write
# UTF-8). Set here, before any test module imports TensorFlow.
for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE", "TF_CONFIG", "TF_USE_LEGACY_KERAS",
             "TF_ENABLE_ONEDNN_OPTS", "TF_XLA_FLAGS", "PYTHONWARNINGS", "PYTHONOPTIMIZE", "LANGUAGE"):
    os.environ.pop(name, None)
os.environ.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
# One thread per process for each of TensorFlow's ops (its intra-op pool) and for numpy's and torch's (OpenMP,
# OpenBLAS): pytest-xdist runs two workers on the two cores, and a second thread of each mostly waited, spinning, on
# the other worker's core: a tenth of the suite's time. No test depends on the thread count.
os.environ.update(TF_NUM_INTRAOP_THREADS="1", OMP_NUM_THREADS="1")


def pytest_collection_modifyitems(items):
    """The tests marked `long` (minutes each) first: pytest-xdist's worksteal gives each worker half of the tests in
    this order and lets one that runs out take from the end of the other's, so a long test started last would keep
    its worker busy long after the other has ended."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def ptb_path():
    """The real corpus, from the environment variable PTB_DATA (.ci/run sets it)."""
    path = os.environ.get("PTB_DATA")
    if not path:
        pytest.skip("PTB_DATA is not set: export PTB_DATA=folder/with/ptb.train.txt to run this test")
    if not os.path.isfile(os.path.join(path, "ptb.train.txt")):
        pytest.skip(f"PTB_DATA={path} holds no ptb.train.txt: point it at the corpus folder to run this test")
    return path


@pytest.fixture(scope="session")
def ptb_quick(ptb_path, tmp_path_factory):
    """The real corpus for quick trainings: its training text as it is (so the same vocabulary, and the same
    training numbers for a seed), its valid and test texts cut to their first 100 lines (about 2,000 words each
    instead of 74,000 and 82,000). Their passes were most of the time of a test that trains on 20,000 words."""
    folder = tmp_path_factory.mktemp("ptb_quick")
    os.symlink(os.path.join(os.path.abspath(ptb_path), "ptb.train.txt"), folder / "ptb.train.txt")
    for split in ("valid", "test"):
        with open(os.path.join(ptb_path, f"ptb.{split}.txt"), encoding="utf-8") as f:
            lines = [next(f) for _ in range(100)]
        (folder / f"ptb.{split}.txt").write_text("".join(lines), encoding="utf-8")
    return str(folder)


def write_corpus(folder, train, valid=None, test=None):
    """Writes ptb.{train,valid,test}.txt into `folder`; valid and test default to train."""
    os.makedirs(folder, exist_ok=True)
    valid = train if valid is None else valid
    test = train if test is None else test
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        with open(os.path.join(folder, f"ptb.{split}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    return str(folder)
