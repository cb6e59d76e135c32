"""Long runs: exact resume after SIGTERM or SIGKILL, same seed same numbers, the NaN guard, and what a
run leaves to be watched by (TensorBoard events, metrics.jsonl, perplexity.png). Test config, real corpus."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from test_cli import run as run_trainer

FLAGS = ["--model=test", "--train_words=20000", "--max_max_epoch=2", "--seed=5"]


def perplexities(stdout):
    """{'train': ..., 'valid': ..., 'test': ...} of the last epoch and the test pass."""
    found = {kind.lower(): float(v) for kind, v in re.findall(r"(Train|Valid|Test) Perplexity: ([\d.]+)", stdout)}
    assert set(found) == {"train", "valid", "test"}, stdout
    return found


@pytest.fixture(scope="module")
def uninterrupted(ptb_path, tmp_path_factory):
    save_path = tmp_path_factory.mktemp("uninterrupted")
    result = run_trainer(f"--data_path={ptb_path}", *FLAGS, f"--save_path={save_path}")
    assert result.returncode == 0, result.stderr
    return result.stdout, save_path


def start_and_stop(ptb_path, save_path, signum, after_line, *extra):
    """Starts a run, sends `signum` once it prints a line matching after_line, returns its exit code and stderr."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "ptb_word_lm.py"), f"--data_path={ptb_path}",
                                *FLAGS, f"--save_path={save_path}", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(after_line, "".join(seen)):
            process.send_signal(signum)
            break
    _, stderr = process.communicate(timeout=300)
    assert re.search(after_line, "".join(seen)), "".join(seen)
    return process.returncode, stderr


def test_same_seed_same_numbers(ptb_path, uninterrupted):
    again = run_trainer(f"--data_path={ptb_path}", *FLAGS)
    assert again.returncode == 0, again.stderr
    assert perplexities(again.stdout) == perplexities(uninterrupted[0])


def test_sigterm_saves_and_the_rerun_resumes_exactly(ptb_path, uninterrupted, tmp_path):
    code, stderr = start_and_stop(ptb_path, tmp_path, signal.SIGTERM, r"Epoch: 1 Learning rate.*\n.*\n.*\n0\.2")
    assert code == 128 + signal.SIGTERM
    assert re.fullmatch(r"Stopped: stopped by signal 15; saved epoch 1, step \d+ to .*: rerun the same command "
                        r"to resume\n", stderr), stderr
    resumed = run_trainer(f"--data_path={ptb_path}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 1, step [1-9]\d*", resumed.stdout)
    assert perplexities(resumed.stdout) == perplexities(uninterrupted[0])


def test_sigkill_loses_only_the_work_since_the_last_checkpoint(ptb_path, uninterrupted, tmp_path):
    code, _ = start_and_stop(ptb_path, tmp_path, signal.SIGKILL, r"Epoch: 2 Learning rate.*\n.*\n.*\n0\.2",
                             "--checkpoint_minutes=0.002")
    assert code == -signal.SIGKILL
    resumed = run_trainer(f"--data_path={ptb_path}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 2, step [1-9]\d*", resumed.stdout)  # mid-epoch, not from scratch
    assert perplexities(resumed.stdout) == perplexities(uninterrupted[0])


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(ptb_path, uninterrupted, tmp_path):
    save_path = tmp_path / "run"
    shutil.copytree(uninterrupted[1], save_path)
    good = open(save_path / "checkpoint").read()
    # A third epoch at an absurd learning rate blows the weights up.
    result = run_trainer(f"--data_path={ptb_path}", *FLAGS[:-2], "--max_max_epoch=3", "--learning_rate=1e30",
                         f"--save_path={save_path}")
    assert result.returncode == 3
    assert re.fullmatch(r"Stopped: the loss became (nan|inf) .* at epoch 3, step \d+: training stopped, the last "
                        r"good checkpoint in .* is kept; lower --learning_rate\n", result.stderr), result.stderr
    assert open(save_path / "checkpoint").read() == good
    evaluated = subprocess.run([sys.executable, os.path.join(ROOT, "lm.py"), "eval", f"--save_path={save_path}",
                                f"--input={ptb_path}/ptb.test.txt"], capture_output=True, text=True, cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = perplexities(uninterrupted[0])["test"]
    assert float(re.search(r"Perplexity: ([\d.]+)", evaluated.stdout).group(1)) == pytest.approx(expected, abs=0.01)


def test_summaries_metrics_and_plot(uninterrupted):
    from tf1 import tf

    stdout, save_path = uninterrupted
    printed = [float(v) for v in re.findall(r"Valid Perplexity: ([\d.]+)", stdout)]
    metrics = [json.loads(line) for line in open(save_path / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [round(m["valid_perplexity"], 3) for m in metrics] == printed
    assert [m["learning_rate"] for m in metrics] == [1.0, 0.5]
    tags = {}
    for event_file in glob.glob(str(save_path / "events.out.tfevents.*")):
        for event in tf.train.summary_iterator(event_file):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(value.simple_value)
    assert {"train_loss", "learning_rate", "words_per_second", "train_perplexity", "valid_perplexity",
            "test_perplexity"} <= set(tags)
    assert [round(v, 3) for v in tags["valid_perplexity"]] == pytest.approx(printed, abs=1e-3)
    with open(save_path / "perplexity.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_lines_show_the_eta(uninterrupted):
    lines = [line for line in uninterrupted[0].splitlines() if " speed: " in line]
    assert len(lines) >= 16  # about 10 an epoch
    assert all(re.search(r"eta: epoch \d+m\d\ds, run \d+m\d\ds$", line) for line in lines)
