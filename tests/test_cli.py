"""The programs' command lines: bad corpus files, --help, Ctrl-C from the first import on, the checks made before
TensorFlow's import, benchmark.py. (A whole training as a user runs it: tests/test_training.py.)"""
import errno
import os
import re
import signal
import subprocess
import sys

import pytest

import in_process
from conftest import ROOT, write_corpus
from tools import cli


def run(*args):
    """`python ptb_word_lm.py ARGS`, in the process that runs one command line after another (tests/in_process.py):
    TensorFlow's import, seconds, is paid once. An object with returncode, stdout and stderr."""
    return in_process.run("ptb_word_lm.py", *args)


def run_process(*args, env=None):
    """The same in a process of its own (with the environment variables `env` added): for several replicas, whose
    logical devices are set up before TensorFlow's runtime starts, and for what TensorFlow's C++ prints on stderr."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "ptb_word_lm.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=dict(os.environ, **(env or {})))


def assert_one_line_error(result, message):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(message, lines[0]), result.stderr


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", " a b c d e f g h\n" * 40)


def test_missing_empty_and_binary_files(corpus):
    os.remove(os.path.join(corpus, "ptb.valid.txt"))
    assert_one_line_error(run(f"--data_path={corpus}"), "^error: .*ptb.valid.txt not found")
    write_corpus(corpus, " a b\n", valid="")
    assert_one_line_error(run(f"--data_path={corpus}"), "^error: .*ptb.valid.txt is empty")
    with open(os.path.join(corpus, "ptb.train.txt"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert_one_line_error(run(f"--data_path={corpus}"), "^error: .*ptb.train.txt is not UTF-8")


@pytest.mark.parametrize("program, flag", [("ptb_word_lm.py", "--save_path"), ("lm.py", "--temperature"),
                                           ("benchmark.py", "--steps")])
def test_help_exits_0(program, flag):
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--help"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"  {flag}: " in result.stdout and result.stdout.endswith("Try --helpfull to get a list of all flags.\n")


# Runs a program with a hook that, at the first import the program's own file makes of a module not yet loaded
# (a standard module like json too, but cli's package), prints SIGINT's handler.
FIRST_IMPORT = """
import runpy, signal, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != {program!r}:
            frame = frame.f_back
        if frame is not None and name.split(".")[0] != "tools":
            print(getattr(signal.getsignal(signal.SIGINT), "__qualname__", None))
            sys.exit(0)
sys.meta_path.insert(0, Hook())
sys.path.insert(0, {root!r})
runpy.run_path({program!r}, run_name="__main__")
"""


@pytest.mark.parametrize("program", ["ptb_word_lm.py", "lm.py", "benchmark.py"])
def test_ctrl_c_is_one_line_from_the_first_slow_import_on(program):
    """cli installs its handler before it imports anything slow, and each program imports cli first."""
    script = FIRST_IMPORT.format(root=ROOT, program=os.path.join(ROOT, program))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert (result.returncode, result.stdout) == (0, "_on_signal\n"), result.stderr


# Runs a program with a hook that ends it, with exit code 3, where it would import TensorFlow (on stdout: tf1
# silences stderr while TensorFlow is imported).
NO_TENSORFLOW = """
import os, runpy, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            print("importing TensorFlow", flush=True)
            os._exit(3)
sys.meta_path.insert(0, Hook())
sys.path.insert(0, {root!r})
sys.argv = [{program!r}, *{args!r}]
runpy.run_path({program!r}, run_name="__main__")
"""


def run_without_tensorflow(program, args):
    script = NO_TENSORFLOW.format(root=ROOT, program=os.path.join(ROOT, program), args=args)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("program, args, message", [
    ("ptb_word_lm.py", ["--keep_prob=0"], r"error: flag --keep_prob=0.0: give a number above 0 and at most 1; "
                                          r"python ptb_word_lm.py --help lists the flags"),
    ("ptb_word_lm.py", ["--model=huge"], "error: flag --model=huge: value should be one of .*"),
    ("ptb_word_lm.py", ["--rnn_mode=blocks"], "error: flag --rnn_mode=blocks: value should be one of .*"),
    ("lm.py", ["eval", "--save_path=x", "--cache_lambda=2"], r"error: flag --cache_lambda=2.0: give a number from 0 "
                                                             r"up to \(not including\) 1; python lm.py --help lists "
                                                             "the flags"),
    ("lm.py", ["generate", "--save_path=x", "--valid=v.txt"], r"error: --valid is not used by generate \(only by "
                                                              r"tune\): leave it out"),
    ("ptb_word_lm.py", ["small"], "error: unexpected argument 'small': flags are written --name=value; python "
                                  "ptb_word_lm.py --help lists them"),
    ("lm.py", ["evaluate", "--save_path=x"], "error: give one command, one of generate, .*"),
    ("lm.py", ["eval"], "error: --save_path=DIR is needed: .*"),
    ("benchmark.py", ["--precisions=fp8"], "error: flag --precisions=.*: fp8 is not one of fp32, bf16, fp16: .*"),
])
def test_a_bad_command_line_is_refused_before_tensorflow_is_imported(program, args, message):
    """A mistyped flag or command costs no wait for TensorFlow's import (seconds): the error comes first."""
    result = run_without_tensorflow(program, args)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert re.fullmatch(message + "\n", result.stderr), result.stderr


@pytest.mark.parametrize("program", ["ptb_word_lm.py", "lm.py", "benchmark.py"])
def test_help_needs_no_tensorflow_and_a_sound_command_line_imports_it(program):
    result = run_without_tensorflow(program, ["--help"])
    assert (result.returncode, result.stderr) == (0, "") and result.stdout.endswith("Try --helpfull to get a list "
                                                                                    "of all flags.\n")
    # A sound command line (here with a folder that does not exist, which is checked later) goes on to the import.
    args = {"ptb_word_lm.py": ["--model=test", "--data_path=/nonexistent"],
            "lm.py": ["eval", "--save_path=/nonexistent"], "benchmark.py": ["--model=test"]}[program]
    result = run_without_tensorflow(program, args)
    assert (result.returncode, result.stdout) == (3, "importing TensorFlow\n"), result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_benchmark_stopped_by_a_signal(signum):
    """Starting or timing: either way one line and 128 + the signal, never a traceback or an abort."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmark.py"), "--model=test", "--steps=1000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        process.wait(timeout=6)
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert re.fullmatch(rf"error: stopped by signal {signum}( \({signal.Signals(signum).name}\)| while starting)\n",
                        stderr)


def test_benchmark_times_lm_eval_with_adaptation():
    """--adapt_words: a line for each of adapt's passes and each window's statistics, their ratios those of their
    words/s (as printed, so to the rounding of the printed numbers)."""
    result = in_process.run("benchmark.py", "--model=test", "--modes=block", "--precisions=fp32", "--steps=1",
                            "--adapt_words=250")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    epoch, train_wps = map(float, re.search(r"lm.py eval on 250 random words, batch 1, fp32; the PTB test text "
                                            r"\(82430 words\) against a training epoch \(929589 words: (\d+) s at "
                                            r"(\d+) w/s, fast fp32\):$", result.stdout, re.M).groups())
    assert epoch == pytest.approx(929589 / train_wps, abs=0.6)
    epoch = 929589 / train_wps  # the printed one is rounded to the second
    rows = re.findall(r"^  (\S.*?) +(\d+) w/s +test text +(\d+) s = +([\d.]+) x static = +([\d.]+) x an epoch$",
                      result.stdout, re.M)
    assert [name for name, *_ in rows] == ["static", "cache N=2000"] + [
        f"dynamic {form} n={n}{decayed}" for form, windows in (("SGD", (10, 20)), ("RMS", (5, 10)))
        for n in windows for decayed in ("", " decayed")]
    static_wps = float(rows[0][1])
    for name, wps, test, against_static, against_epoch in rows:
        wps, seconds = float(wps), 82430 / float(wps)
        assert float(test) == pytest.approx(seconds, abs=0.5 + seconds / 100), name
        assert float(against_static) == pytest.approx(static_wps / wps, abs=0.05 + static_wps / wps / 100), name
        assert float(against_epoch) == pytest.approx(seconds / epoch, abs=0.005 + seconds / epoch / 100), name
    statistics = re.findall(r"^  RMS statistics n=(\d+) +(\d+) w/s +200000 words +(\d+) s = +([\d.]+) x an epoch, "
                            r"paid once per run of lm.py eval$", result.stdout, re.M)
    assert [window for window, *_ in statistics] == ["5", "10"]
    for _, wps, stats, against_epoch in statistics:
        assert float(stats) == pytest.approx(200000 / float(wps), abs=0.5 + float(stats) / 100)
        assert float(against_epoch) == pytest.approx(float(stats) / epoch, abs=0.005 + float(stats) / epoch / 100)


@pytest.mark.parametrize("error, advice", [
    (OSError(errno.ENOSPC, "No space left on device", "run/model.ckpt-41.meta"), "free space on that disk, or choose "
                                                                                 "a folder on another one"),
    (PermissionError(errno.EACCES, "Permission denied", "ckpt/adapt_progress.json"), "make it writable, or choose a "
                                                                                     "folder you can write to"),
    (OSError(errno.EROFS, "Read-only file system", "ckpt/adapt.json"), "make it writable, or choose a folder you can "
                                                                       "write to"),
    (OSError(0, "No space left on device; some TensorFlow framing", "run"), "free space on that disk, or choose a "
                                                                            "folder on another one"),
    (OSError(errno.EIO, "Input/output error", "run"), "free space or choose a writable folder"),
])
def test_a_refused_write_gets_the_advice_that_fits_its_cause(error, advice):
    """A read-only folder (lm.py tune's progress file, say) is not told to free space, nor a full disk to find a
    writable folder. (In-process: as root, the tests cannot be refused a write by permissions.)"""
    assert cli.write_advice(error) == advice


# benchmark.py with an import hook that makes torch missing, as on a machine without it.
NO_TORCH = """
import runpy, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("No module named 'torch'")
sys.meta_path.insert(0, Hook())
sys.path.insert(0, {root!r})
sys.argv = [{program!r}, *{args!r}]
runpy.run_path({program!r}, run_name="__main__")
"""
PYTORCH_LINE = r"pytorch   {} +\d+   this project's fast mode: \d+\.\d\d x"


def test_benchmark_times_pytorch_where_torch_is_installed_and_says_so_where_not():
    """--pytorch: a line per precision with PyTorch's words per second and the ratio, or one note without torch. Only
    the lines' form is checked: no test depends on speed."""
    args = ["--model=test", "--modes=fast", "--precisions=fp32,bf16", "--steps=1", "--pytorch"]
    script = NO_TORCH.format(root=ROOT, program=os.path.join(ROOT, "benchmark.py"), args=args)
    without = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert without.returncode == 0, without.stderr
    assert without.stdout.splitlines()[-1] == "pytorch: not installed (pip install torch): not timed"
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), *args], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)  # torch and its OpenMP in a process of their own
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(PYTORCH_LINE.format("fp32     "), lines[-2]), result.stdout
    assert re.fullmatch(PYTORCH_LINE.format("bf16     "), lines[-1]), result.stdout
