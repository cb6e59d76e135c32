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

import configs
import in_process
from conftest import ROOT
from test_cli import run as run_trainer, run_process
from tools import checkpoint

FLAGS = ["--model=test", "--train_words=20000", "--max_max_epoch=2", "--seed=5"]


def perplexities(stdout):
    """{'train': ..., 'valid': ..., 'test': ...} of the last epoch and the test pass."""
    found = {kind.lower(): float(v) for kind, v in re.findall(r"(Train|Valid|Test) Perplexity: ([\d.]+)", stdout)}
    assert set(found) == {"train", "valid", "test"}, stdout
    return found


@pytest.fixture(scope="module")
def uninterrupted(ptb_quick, tmp_path_factory):
    """(stdout, folder) of a run of FLAGS that nothing stops: what the tests below stop, resume and compare to. A real
    process, as a user runs it: what it prints on stderr (TensorFlow's C++ lines included) is checked empty."""
    save_path = tmp_path_factory.mktemp("uninterrupted")
    result = run_process(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={save_path}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout, save_path


def test_the_test_config_trains_end_to_end(uninterrupted):
    stdout, save_path = uninterrupted
    values = perplexities(stdout)
    # Two epochs of a 2-unit model on 20,000 words: far better than uniform guessing (10,000), far worse than small.
    assert all(200 < v < 2000 for v in values.values()), stdout
    first_epoch = float(re.search(r"Epoch: 1 Train Perplexity: ([\d.]+)", stdout).group(1))
    assert values["train"] < 0.8 * first_epoch  # the second epoch learned more
    files = os.listdir(save_path)
    assert {"checkpoint", "config.json", "vocab.txt", "metrics.jsonl", "perplexity.png", "run.json"} <= set(files)
    assert any(f.startswith("model.ckpt-") and f.endswith(".index") for f in files)


def start_and_stop(ptb_quick, save_path, signum, after_line, *extra, flags=FLAGS):
    """Starts a run, sends `signum` once it prints a line matching after_line, returns its exit code and stderr."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "ptb_word_lm.py"), f"--data_path={ptb_quick}",
                                *flags, f"--save_path={save_path}", *extra],
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


def test_same_seed_same_numbers(ptb_quick, uninterrupted):
    again = run_trainer(f"--data_path={ptb_quick}", *FLAGS)
    assert again.returncode == 0, again.stderr
    assert perplexities(again.stdout) == perplexities(uninterrupted[0])


def test_sigterm_saves_and_the_rerun_resumes_exactly(ptb_quick, uninterrupted, tmp_path):
    code, stderr = start_and_stop(ptb_quick, tmp_path, signal.SIGTERM, r"Epoch: 1 Learning rate.*\n.*\n.*\n0\.2")
    assert code == 128 + signal.SIGTERM
    assert re.fullmatch(r"Stopped: stopped by signal 15; saved epoch 1, step \d+ to .*: rerun the same command "
                        r"to resume\n", stderr), stderr
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 1, step [1-9]\d*", resumed.stdout)
    assert perplexities(resumed.stdout) == perplexities(uninterrupted[0])


def test_sigkill_loses_only_the_work_since_the_last_checkpoint(ptb_quick, uninterrupted, tmp_path):
    code, _ = start_and_stop(ptb_quick, tmp_path, signal.SIGKILL, r"Epoch: 2 Learning rate.*\n.*\n.*\n0\.2",
                             "--checkpoint_minutes=0.002")
    assert code == -signal.SIGKILL
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 2, step [1-9]\d*", resumed.stdout)  # mid-epoch, not from scratch
    assert perplexities(resumed.stdout) == perplexities(uninterrupted[0])


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(ptb_quick, uninterrupted, tmp_path):
    save_path = tmp_path / "run"
    shutil.copytree(uninterrupted[1], save_path)
    good = open(save_path / "checkpoint").read()
    # A third epoch at an absurd learning rate blows the weights up.
    # Where it diverges, and into what (nan, inf, or a finite loss beyond a float's exp), depends on the CPU's
    # rounding; that it is caught before any save does not.
    result = run_trainer(f"--data_path={ptb_quick}", *FLAGS[:-2], "--max_max_epoch=3", "--learning_rate=1e30",
                         "--checkpoint_minutes=0.0001", f"--save_path={save_path}")
    assert result.returncode == 3, result.stderr
    assert re.fullmatch(r"Stopped: (the loss became \S+ \(gradient norm \S+\) at epoch 3, step \d+|the weights to be "
                        r"saved at epoch 3, step \d+ are (not finite|diverged \(a loss of \S+ on validation text\))|the valid perplexity became \S+ at epoch 3): training "
                        r"stopped, the last good checkpoint in .* is kept; lower --learning_rate\n", result.stderr), \
        result.stderr
    assert open(save_path / "checkpoint").read() == good
    evaluated = in_process.run("lm.py", "eval", f"--save_path={save_path}", f"--input={ptb_quick}/ptb.test.txt")
    assert evaluated.returncode == 0, evaluated.stderr
    expected = perplexities(uninterrupted[0])["test"]
    assert float(re.search(r"Perplexity: ([\d.]+)", evaluated.stdout).group(1)) == pytest.approx(expected, abs=0.01)


def test_a_moved_folder_resumes_from_its_own_files(ptb_quick, uninterrupted, tmp_path):
    """The index names its checkpoints relative to the folder; an older, absolute one is read for the name only."""
    index = open(uninterrupted[1] / "checkpoint").read()
    assert str(uninterrupted[1]) not in index and 'model_checkpoint_path: "model.ckpt-' in index
    original, moved = tmp_path / "original", tmp_path / "moved"
    shutil.copytree(uninterrupted[1], original)
    shutil.copytree(original, moved)
    (moved / "checkpoint").write_text(index.replace('"model.ckpt-', f'"{original}/model.ckpt-'))  # as before
    shutil.rmtree(original)
    # As if stopped in its test pass (no test perplexity recorded yet): the rerun restores the weights for it.
    records = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines()]
    del records[-1]["test_perplexity"]
    (moved / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={moved}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(rf"Resuming from {moved}/model.ckpt-\d+: epoch 3, step 0", resumed.stdout)
    assert re.search(r"Test Perplexity: ([\d.]+)", resumed.stdout).group(1) == \
        re.search(r"Test Perplexity: ([\d.]+)", uninterrupted[0]).group(1)
    assert not original.exists()


def test_rerunning_a_finished_run_says_so_and_changes_nothing(ptb_quick, uninterrupted, tmp_path):
    """The same command again after the run ended: its numbers, read from metrics.jsonl, and no second test pass."""
    shutil.copytree(uninterrupted[1], tmp_path / "run")
    before = {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(tmp_path / "run")}
    again = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}/run")
    assert again.returncode == 0, again.stderr
    train, valid, test = (re.search(rf"{split} Perplexity: ([\d.]+)\n(?!.*{split} Perplexity)", uninterrupted[0],
                                    re.S).group(1) for split in ("Train", "Valid", "Test"))
    assert again.stdout.splitlines()[-1] == (f"{tmp_path}/run holds a finished run of 2 epochs (perplexity: train "
                                             f"{train}, valid {valid}, test {test}; metrics.jsonl): nothing to do; "
                                             "give a larger --max_max_epoch to train it further")
    assert "Resuming" not in again.stdout and "Test Perplexity" not in again.stdout
    assert {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(tmp_path / "run")} == before


NOT_FINITE = """
import os, sys
import numpy as np
import configs, ptb_word_lm, reader
from model import Position
from tools import cli, training
from tools.tf1 import tf

save_path = sys.argv[1]
config = configs.get_config("test")
data = reader.PTBData(*[list(np.random.RandomState(s).randint(0, 50, 400)) for s in (3, 4, 5)],
                      vocab=[f"w{i}" for i in range(50)])
config.vocab_size = 50
with tf.Graph().as_default():
    m, mvalid, _ = ptb_word_lm.create_models(config, "block", "fp32", 1)
    run = training.TrainingRun(m, mvalid, data, config, 1, save_path)
    softmax_b = [v for v in tf.trainable_variables() if v.op.name == "Model/softmax_b"][0]
run.start(None)
run.save(1, Position())
good = sorted(os.listdir(save_path))
softmax_b.load(np.full([50], np.inf, np.float32), run.session)
try:
    run.save(1, Position(5))
except cli.Stop as e:
    print(e.exit_code, e, sorted(os.listdir(save_path)) == good)
"""


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    """In a process of its own: ptb_word_lm's flags and lm's would clash in one."""
    result = subprocess.run([sys.executable, "-c", NOT_FINITE, str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"3 the weights to be saved at epoch 2, step 5 are not finite: training stopped, the last "
                        r"good checkpoint in .* is kept; lower --learning_rate True\n", result.stdout), result.stdout


def test_a_perplexity_beyond_a_float_is_inf_not_an_exception():
    import math

    from model import Position

    assert Position(1, 1e6, 1).perplexity == math.inf
    assert Position(1, 20.0, 10).perplexity == pytest.approx(math.exp(2.0))
    assert math.isnan(Position(1, float("nan"), 1).perplexity)


def test_summaries_metrics_and_plot(uninterrupted):
    from tools.tf1 import tf

    from PIL import Image

    stdout, save_path = uninterrupted
    printed = [float(v) for v in re.findall(r"Valid Perplexity: ([\d.]+)", stdout)]
    test = perplexities(stdout)["test"]
    metrics = [json.loads(line) for line in open(save_path / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [round(m["valid_perplexity"], 3) for m in metrics] == printed
    assert [m["learning_rate"] for m in metrics] == [1.0, 0.5]
    assert "test_perplexity" not in metrics[0] and round(metrics[1]["test_perplexity"], 3) == test
    tags, steps = {}, {}
    for event_file in glob.glob(str(save_path / "events.out.tfevents.*")):
        for event in tf.train.summary_iterator(event_file):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(value.simple_value)
                steps.setdefault(value.tag, []).append(event.step)
    assert {"train_loss", "learning_rate", "words_per_second", "train_perplexity", "valid_perplexity",
            "test_perplexity"} <= set(tags)
    assert [round(v, 3) for v in tags["valid_perplexity"]] == pytest.approx(printed, abs=1e-3)
    assert steps["valid_perplexity"] == [m["global_step"] for m in metrics]
    assert steps["test_perplexity"] == [metrics[-1]["global_step"]]  # at the global step, like every other scalar
    with Image.open(save_path / "perplexity.png") as plot:
        assert plot.format == "PNG"
        assert plot.text["Title"] == "PTB word-level LSTM, test config: test perplexity " \
                                     f"{metrics[1]['test_perplexity']:.2f}"


def test_progress_lines_show_the_eta(uninterrupted):
    lines = [line for line in uninterrupted[0].splitlines() if " speed: " in line]
    assert len(lines) >= 16  # about 10 per epoch
    assert all(re.search(r"eta: epoch \d+m\d\ds, run \d+m\d\ds$", line) for line in lines)


def one_line(stderr):
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("program", ["ptb_word_lm.py", "lm.py"])
def test_ctrl_c_while_starting(ptb_quick, tmp_path, program):
    """Ctrl-C during TensorFlow's import: one line, exit 130, and no save folder left behind."""
    args = [f"--data_path={ptb_quick}", "--model=test", f"--save_path={tmp_path}/run"] if program == "ptb_word_lm.py" \
        else ["generate", f"--save_path={tmp_path}/run"]
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, program), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        process.wait(timeout=1.0)  # Python is up and importing TensorFlow by now
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert re.fullmatch(r"error: stopped by signal 2( \(SIGINT\))?.*", one_line(stderr))
    assert not (tmp_path / "run").exists()


# Runs ptb_word_lm.py (argv[2:]) sending itself SIGINT at a point given by argv[1]: as the last epoch's end is saved
# (where signals wait for the save), or as the test pass starts. Sent from within, it lands there on any machine.
SIGINT_AT = """
import os, runpy, signal, sys
import model
from tools import training
where, sys.argv = sys.argv[1], ["ptb_word_lm.py", *sys.argv[2:]]
if where == "last save":
    end_epoch = training.TrainingRun.end_epoch
    def interrupted(self, epoch, *args):
        if epoch + 1 == self.config.max_max_epoch:
            os.kill(os.getpid(), signal.SIGINT)
        return end_epoch(self, epoch, *args)
    training.TrainingRun.end_epoch = interrupted
else:
    run_epoch = model.run_epoch
    def interrupted(session, m, data, *args, window=None, **kwargs):
        if window is not None:  # the test pass's windows
            os.kill(os.getpid(), signal.SIGINT)
        return run_epoch(session, m, data, *args, window=window, **kwargs)
    model.run_epoch = interrupted
runpy.run_path("ptb_word_lm.py", run_name="__main__")
"""


@pytest.mark.parametrize("where, message", [
    ("last save", r"Stopped: stopped by signal 2; saved epoch 3, step 0 to .*: rerun the same command to resume"),
    ("test pass", r"Stopped: stopped by signal 2 \(SIGINT\) in the test pass; the trained model is saved in .*: "
                  r"rerun the same command to run the test pass")])
def test_ctrl_c_at_the_end_of_training_and_in_the_test_pass(ptb_quick, uninterrupted, tmp_path, where, message):
    """Between the last epoch and the test pass, or in it: exit 130, and the rerun gives the same test perplexity."""
    stopped = subprocess.run([sys.executable, "-c", SIGINT_AT, where, f"--data_path={ptb_quick}", *FLAGS,
                              f"--save_path={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    assert re.fullmatch(message, one_line(stopped.stderr))
    assert "Test Perplexity" not in stopped.stdout
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Test Perplexity: ([\d.]+)", resumed.stdout).group(1) == \
        re.search(r"Test Perplexity: ([\d.]+)", uninterrupted[0]).group(1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_lm_eval_stopped_by_a_signal(ptb_quick, uninterrupted, tmp_path, signum):
    """Stopped while it evaluates: one line, 128 + the signal, no perplexity.

    The signal follows the note on the text's one unknown word, which eval prints once the text is read and
    before it scores it: a fixed wait of 6 s once saw the whole of ptb.train.txt scored before its signal."""
    with open(f"{ptb_quick}/ptb.train.txt") as f:
        (tmp_path / "text.txt").write_text("zyzzyva" + f.read())
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "lm.py"), "eval", f"--save_path={uninterrupted[1]}",
                                f"--input={tmp_path}/text.txt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    note = process.stderr.readline()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert note == "note: not in the vocabulary, read as <unk>: zyzzyva\n", (note, stdout, stderr)
    assert process.returncode == 128 + signum, (stdout, stderr)
    assert re.fullmatch(rf"error: stopped by signal {signum}.*", one_line(stderr))
    assert "Perplexity" not in stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system, so that a run can fill it; skipped where mounting one is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    # Lazily: a training stopped in the test server (tests/in_process.py) may still hold a file there, which a
    # process's end would have closed.
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk):
    """Fills the file system to its last byte: unbuffered writes of what statvfs says is free, until nothing is.

    (Buffered writes of 64 KB until one failed left it to chance: when the failing write's remainder fitted the
    buffer, close() failed again in the test itself, and how much was free depended on the first run's file
    sizes, which depend on the perplexities the CPU computes.)"""
    with open(disk / "filler", "wb", buffering=0) as f:
        while True:
            stat = os.statvfs(disk)
            if not stat.f_bavail:
                break
            f.write(b"\0" * min(stat.f_bavail * stat.f_frsize, 1 << 20))


def test_a_full_disk_ends_with_one_line_and_keeps_the_last_checkpoint(ptb_quick, small_disk):
    save_path = small_disk / "run"
    first = run_trainer(f"--data_path={ptb_quick}", *FLAGS[:-2], "--max_max_epoch=1", f"--save_path={save_path}")
    assert first.returncode == 0, first.stderr
    before = {f: (save_path / f).read_bytes() for f in os.listdir(save_path) if not f.startswith("events.")}
    fill(small_disk)
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS[:-2], "--max_max_epoch=2", f"--save_path={save_path}")
    assert resumed.returncode == 1, resumed.stderr
    # Its first write is TensorBoard's, at the first progress line, long before the checkpoint is saved.
    assert re.fullmatch(rf"error: No space left on device \({re.escape(str(save_path))}/events\.out\.tfevents\."
                        r"\d+\.[^)]+\): free space on that disk, or choose a folder on another one",
                        one_line(resumed.stderr))
    after = {f: (save_path / f).read_bytes() for f in os.listdir(save_path) if not f.startswith("events.")}
    assert after == before
    exported = in_process.run("lm.py", "export", f"--save_path={save_path}", f"--export_dir={small_disk}/exported")
    assert exported.returncode == 1
    assert one_line(exported.stderr) == f"error: No space left on device ({small_disk}/exported): free space on " \
                                        "that disk, or choose a folder on another one"
    assert sorted(os.listdir(small_disk)) == ["filler", "run"]  # no half-written SavedModel, no temporary folder
    os.remove(small_disk / "filler")
    again = run_trainer(f"--data_path={ptb_quick}", *FLAGS[:-2], "--max_max_epoch=2", f"--save_path={save_path}")
    assert again.returncode == 0, again.stderr
    assert "Resuming from" in again.stdout and "Epoch: 2 Valid Perplexity" in again.stdout


@pytest.mark.parametrize("blocks", [16, 102])
def test_a_save_that_fills_the_disk_leaves_no_temporary_file(small_disk, blocks):
    """A save the disk refuses leaves none of the Saver's temporary files (without their removal, the test with
    102 blocks free fails: the weights fitted, the graph did not): config.json and vocab.txt, written whole before
    the weights, are there. The weights take 98 blocks of 4 KB and their index 1, the graph 2."""
    from tools.tf1 import tf
    with tf.Graph().as_default():
        tf.Variable(tf.zeros([1000, 100]), name="weights")  # 400,008 bytes of weights
        step = tf.train.get_or_create_global_step()
        saver = tf.train.Saver(save_relative_paths=True)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            fill(small_disk)
            with open(small_disk / "filler", "r+b") as f:
                f.truncate(os.path.getsize(small_disk / "filler") - blocks * 4096)
            with pytest.raises(OSError, match="No space left on device|Resource exhausted"):
                checkpoint.save(session, saver, str(small_disk), configs.get_config("test"), ["a", "b"], step)
    left = os.listdir(small_disk)
    assert {"config.json", "vocab.txt"} <= set(left) and not [f for f in left if "tmp" in f or "temp" in f], left


def test_an_epoch_whose_save_fails_keeps_its_metrics_line(tmp_path, monkeypatch):
    """A full disk at the epoch's checkpoint: the epoch's line is in metrics.jsonl already (the epoch, redone after
    a resume, replaces it), and the error reaches the user (cli.run makes it one line, exit 1)."""
    import errno
    import numpy as np
    import reader
    from model import PTBModel
    from test_model import TinyConfig
    from tools import monitor, training
    from tools.tf1 import tf

    config = TinyConfig()
    data = reader.PTBData(*[list(np.random.RandomState(s).randint(0, config.vocab_size, 400)) for s in (3, 4, 5)],
                          vocab=[f"w{i}" for i in range(config.vocab_size)])
    with tf.Graph().as_default():
        with tf.variable_scope("Model", initializer=tf.random_uniform_initializer(-0.1, 0.1)):
            m = PTBModel(True, config, config.batch_size, config.num_steps, "block")
        with tf.variable_scope("Model", reuse=True):
            mvalid = PTBModel(False, config, config.batch_size, config.num_steps, "block")
        run = training.TrainingRun(m, mvalid, data, config, 1, str(tmp_path), model_name="test")
        run.start(None)

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

        monkeypatch.setattr(checkpoint, "save", full_disk)
        with pytest.raises(OSError, match="No space left on device"):
            run.end_epoch(0, 1.0, 150.0, 160.0)
        run.session.close()
    records = monitor.read_metrics(str(tmp_path))
    assert [(r["epoch"], r["train_perplexity"], r["valid_perplexity"]) for r in records] == [(1, 150.0, 160.0)]
