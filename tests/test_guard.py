"""The guard's check that the LSTM learns (tools/guard.py, --max_cell_state): a run whose cell state passes the limit
in the first tenth of epoch 1 starts again with another seed when the seed was drawn, and stops with exit code 3
when the user chose it; the check looks at nothing else and nowhere else.

The test config never saturates a cell (|c| stays below 5 in its first 2,000 steps on the real corpus), so these
tests set the limit low, between what the first two seeds the program draws reach: a stand-in for large's stuck
seeds, whose cells pass 1,000 within 50 steps (results/first-steps.txt)."""
import json
import re

import numpy as np
import pytest

import in_process

# The first seeds ptb_word_lm.py draws when numpy's global generator is seeded with 0: 209652396 (its |c| reaches
# 0.0289 by step 4 of the test config on 2,000 words), then 398764591 (0.0228 at most).
FIRST, SECOND = 209652396, 398764591
QUICK = ["--model=test", "--train_words=2000", "--max_max_epoch=1"]  # 49 windows per epoch: the check sees 4


def train(ptb_quick, *args, seeded=False):
    """ptb_word_lm.py in the process that runs one command line after another (tests/in_process.py); `seeded`: with
    numpy's generator seeded with 0."""
    return in_process.run("ptb_word_lm.py", f"--data_path={ptb_quick}", *QUICK, *args,
                          numpy_seed=0 if seeded else None)


def one_line(result):
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def seed_line(stdout):
    return int(re.search(r"^Model: .* seed: (\d+),", stdout, re.M).group(1))


def test_a_drawn_seed_that_stops_learning_is_abandoned_for_another(ptb_quick, tmp_path):
    run = tmp_path / "run"
    result = train(ptb_quick, "--max_cell_state=0.025", f"--save_path={run}", seeded=True)
    assert result.returncode == 0, result.stderr
    assert seed_line(result.stdout) == FIRST
    assert re.search(rf"^Seed {FIRST} stopped learning at epoch 1, step [1-4] \(a cell state of 0\.0\d+, beyond "
                     rf"--max_cell_state=0\.025\): starting again with seed {SECOND}$", result.stdout, re.M)
    assert result.stdout.count("Test Perplexity: ") == 1
    assert json.loads((run / "run.json").read_text())["abandoned_seeds"] == [FIRST]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the abandoned attempt's summaries are gone
    from tools.tf1 import tf
    assert tf.train.load_variable(str(run), "Model/Train/dropout_seed") == SECOND
    # Resumed (to train longer), the run goes on with its new seed and is not checked again.
    resumed = train(ptb_quick, "--max_cell_state=0.025", f"--save_path={run}", "--max_max_epoch=2", seeded=True)
    assert resumed.returncode == 0, resumed.stderr
    assert seed_line(resumed.stdout) == SECOND and "Resuming from " in resumed.stdout
    assert "stopped learning" not in resumed.stdout


def test_a_chosen_seed_that_stops_learning_ends_with_exit_3_and_leaves_no_folder(ptb_quick, tmp_path):
    run = tmp_path / "run"
    result = train(ptb_quick, "--seed=1", "--max_cell_state=0.01", f"--save_path={run}")
    assert result.returncode == 3, result.stderr
    assert re.fullmatch(r"Stopped: the LSTM stopped learning at epoch 1, step [1-4]: a cell state reached 0\.0\d+, "
                        r"beyond --max_cell_state=0\.01 \(a saturated cell grows by about one per word\); seed 1 does "
                        r"this on this CPU: choose another --seed \(or --max_cell_state=0 to train it all the same\)",
                        one_line(result))
    assert "Test Perplexity" not in result.stdout
    assert not run.exists()  # it saved nothing: the folder it created is gone


def test_a_run_that_keeps_stopping_gives_up_after_twenty_seeds(ptb_quick):
    result = train(ptb_quick, "--max_cell_state=1e-9", seeded=True)
    assert result.returncode == 3, result.stderr
    assert len(re.findall(r"^Seed \d+ stopped learning", result.stdout, re.M)) == 19
    assert "; 20 seeds tried; seed " in one_line(result)


def test_the_check_is_off_with_max_cell_state_0(ptb_quick):
    result = train(ptb_quick, "--seed=1", "--max_cell_state=0")
    assert result.returncode == 0, result.stderr
    assert "Test Perplexity: " in result.stdout


def test_the_check_looks_at_the_cell_state_in_the_first_tenth_of_epoch_1_only():
    from tools import guard

    lstm = np.zeros([2, 2, 3, 4], np.float32)  # [layers, (c, h), batch, hidden]
    lstm[1, 0, 2, 3] = -1000.5
    with pytest.raises(guard.StoppedLearning, match=r"step 7: a cell state reached 1000\.5, beyond "
                                                    r"--max_cell_state=1000 "):
        guard.Guard.check_learning(lstm, 7, 1000)
    guard.Guard.check_learning(lstm, 7, 1001)  # below the limit: nothing
    lstm[1, 1, 2, 3] = 5000  # h is no cell state
    guard.Guard.check_learning(lstm, 7, 1001)
    with pytest.raises(guard.StoppedLearning):
        guard.Guard.check_learning(np.full([1, 2, 1, 1], np.nan), 1, 1000)
    guard.Guard.check_learning(np.full([2, 1, 3, 4], 5000.0), 1, 1000)  # GRU, tanh RNN: h only
    assert guard.Guard.checks_learning(0, 132, 1327) and not guard.Guard.checks_learning(0, 133, 1327)
    assert not guard.Guard.checks_learning(1, 1, 1327)
    assert guard.Guard.checks_learning(0, 1, 5)  # an epoch of fewer than 10 windows: its first
