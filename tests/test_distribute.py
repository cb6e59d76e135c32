"""Data-parallel training (distribute.py) computes what one process computes: the loss at every step, the
weights after an epoch, the dropout masks, and checkpoints that resume with any replica count; workers that
stop or die end the others with one line. Test config, real corpus; different graphs round differently, so
the comparisons are to 1e-5 relative. Every test that starts processes waits for them a bounded time and
kills what is left."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import in_process
from conftest import ROOT, write_corpus
from test_cli import assert_one_line_error, run as run_trainer, run_process
from test_training import perplexities, start_and_stop

# Trains one epoch per set of config fields and saves the loss of every step and the weights after it. In a process of
# its own: logical CPU devices can only be set up before TensorFlow's runtime starts, which an earlier test may have
# done here. argv: corpus, output prefix (a file PREFIX-i.npz per set), seed, replicas, then the sets of config
# fields, each a JSON object; TF_CONFIG makes it a worker.
ONE_EPOCH = """
import json, os, sys
import numpy as np
import configs, ptb_word_lm, reader
from model import run_epoch
from tools import distribute, training
from tools.tf1 import tf

data_path, out, seed, count, option_sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
data = reader.load_ptb(data_path)
data = data._replace(train=data.train[:10000])
cluster = distribute.read_tf_config(os.environ.get("TF_CONFIG", ""))
replicas = distribute.Replicas(count, cluster, timeout=120) if count > 1 or cluster else None
for index, options in enumerate(option_sets):
    config = configs.get_config("test")
    config.vocab_size = len(data.vocab)
    for name, value in json.loads(options).items():
        setattr(config, name, value)
    with tf.Graph().as_default():
        m, mvalid, _ = ptb_word_lm.create_models(config, "fast", "fp32", seed, replicas)
        run = training.TrainingRun(m, mvalid, data, config, seed, replicas=replicas,
                                   one_process_model=lambda: ptb_word_lm.create_models(config, "fast", "fp32", seed))
    run.start(None)  # with several workers, every worker takes the chief's weights and seed
    m.assign_lr(run.session, 1.0)
    losses = []
    run_epoch(run.session, m, data.train, m.train_op,
              on_step=lambda position, vals, epoch_size: losses.append(vals["cost"]))
    with run.graph.as_default():
        weights = dict(zip([v.op.name for v in tf.trainable_variables()], run.session.run(tf.trainable_variables())))
    np.savez(f"{out}-{index}.npz", losses=np.array(losses), **weights)
    run.session.close()
"""


def one_epoch(ptb_quick, out, seed, replicas, *option_sets):
    return [sys.executable, "-c", ONE_EPOCH, ptb_quick, str(out), str(seed), str(replicas),
            *(json.dumps(options) for options in option_sets)]


def assert_same_epoch(one_file, other_file):
    one, other = np.load(one_file), np.load(other_file)
    assert len(one["losses"]) == len(other["losses"]) == 249
    np.testing.assert_allclose(other["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][-1] < 0.8 * one["losses"][0]  # it learned something, so the weights below moved
    assert len(one.files) == 6  # the losses; the embedding, kernel, bias, softmax w and b
    for name in one.files:
        np.testing.assert_allclose(other[name], one[name], rtol=1e-5, atol=1e-7, err_msg=name)


# No dropout; dropout; variational and word dropout (each replica draws its share of every mask).
DROPOUTS = [{}, {"keep_prob": 0.5}, {"keep_prob": 0.6, "variational_dropout": True, "word_keep_prob": 0.8}]


def test_two_replicas_give_the_loss_of_every_step_and_the_weights_of_one_process(ptb_quick, tmp_path):
    for replicas in (1, 2):  # each in one process: every dropout in turn
        result = subprocess.run(one_epoch(ptb_quick, tmp_path / f"{replicas}", 5, replicas, *DROPOUTS),
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr
    for index, options in enumerate(DROPOUTS):
        assert_same_epoch(tmp_path / f"1-{index}.npz", tmp_path / f"2-{index}.npz")


@contextlib.contextmanager
def workers(commands):
    """Starts one process per command, as workers 0, 1, ... of a cluster on 127.0.0.1 (TF_CONFIG); kills those left."""
    sockets = [socket.socket() for _ in commands]
    for s in sockets:
        s.bind(("127.0.0.1", 0))  # a free port each, all at once so that they differ
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    processes = []
    try:
        for index, command in enumerate(commands):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            processes.append(subprocess.Popen(command, env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)), cwd=ROOT,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_two_workers_give_the_loss_of_every_step_and_the_weights_of_one_process(ptb_quick, tmp_path):
    """Worker 1 is given another seed: every worker takes the chief's weights and dropout seed."""
    options = {"keep_prob": 0.5}
    with workers([one_epoch(ptb_quick, tmp_path / "w0", 5, 1, options),
                  one_epoch(ptb_quick, tmp_path / "w1", 7, 1, options)]) as processes:
        alone = subprocess.run(one_epoch(ptb_quick, tmp_path / "one", 5, 1, options), capture_output=True,
                               text=True, cwd=ROOT, timeout=600)
        for process in processes:
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr
    assert alone.returncode == 0, alone.stderr
    assert_same_epoch(tmp_path / "one-0.npz", tmp_path / "w0-0.npz")
    assert_same_epoch(tmp_path / "one-0.npz", tmp_path / "w1-0.npz")


FLAGS = ["--model=test", "--train_words=10000", "--max_max_epoch=2", "--seed=5", "--keep_prob=0.5"]


@pytest.fixture(scope="module")
def uninterrupted(ptb_quick):
    """The perplexities of one process training FLAGS without a stop."""
    result = run_trainer(f"--data_path={ptb_quick}", *FLAGS)
    assert result.returncode == 0, result.stderr
    return perplexities(result.stdout)


def test_a_checkpoint_of_two_replicas_resumes_in_one_process(ptb_quick, tmp_path, uninterrupted):
    """Stopped inside epoch 1 with 2 replicas, resumed with 1 (the state of every row is in the checkpoint)."""
    code, stderr = start_and_stop(ptb_quick, tmp_path, signal.SIGTERM, r"Epoch: 1 Learning rate.*\n.*\n.*\n0\.2",
                                  "--replicas=2", flags=FLAGS)
    assert code == 128 + signal.SIGTERM, stderr
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 1, step [1-9]\d*", resumed.stdout)
    assert perplexities(resumed.stdout) == pytest.approx(uninterrupted, rel=1e-5)
    # and the other way: one process's checkpoint, at the end of epoch 1, resumed with 4 replicas
    again = run_trainer(f"--data_path={ptb_quick}", *FLAGS[:2], "--max_max_epoch=1", *FLAGS[3:],
                        f"--save_path={tmp_path}/one")
    assert again.returncode == 0, again.stderr
    four = run_process(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={tmp_path}/one", "--replicas=4")
    assert four.returncode == 0, four.stderr
    assert re.search(r"Resuming from .*: epoch 2, step 0", four.stdout)
    assert perplexities(four.stdout) == pytest.approx(uninterrupted, rel=1e-5)


def trainer(ptb_quick, save_path, *extra):
    """The command every worker of a run is given (with `extra` arguments)."""
    return [sys.executable, os.path.join(ROOT, "ptb_word_lm.py"), f"--data_path={ptb_quick}", *FLAGS,
            f"--save_path={save_path}", "--checkpoint_minutes=0.002", "--worker_timeout=60", *extra]


def signal_when(process, pattern, signum):
    """Sends `signum` to the process once its output has a line matching `pattern`."""
    for line in process.stdout:
        if re.search(pattern, line):
            process.send_signal(signum)
            return
    pytest.fail(f"the process ended before printing {pattern}")


def test_killing_a_worker_stops_the_other_with_one_line_and_the_checkpoint_resumes(ptb_quick, tmp_path,
                                                                                   uninterrupted):
    save_path = tmp_path / "run"
    with workers([trainer(ptb_quick, save_path)] * 2) as (chief, other):
        signal_when(other, r"^0\.2", signal.SIGKILL)
        _, stderr = chief.communicate(timeout=180)  # --worker_timeout=60 at most, if not sooner
    assert chief.returncode == 4, stderr
    assert re.fullmatch(r"Stopped: lost touch with the other workers \(.+\); the last checkpoint in .*run is kept: "
                        r"restart every worker with the same command to resume\n", stderr), stderr
    resumed = run_trainer(f"--data_path={ptb_quick}", *FLAGS, f"--save_path={save_path}")  # in one process
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 1, step [1-9]\d*", resumed.stdout)
    assert perplexities(resumed.stdout) == pytest.approx(uninterrupted, rel=1e-5)


def test_ctrl_c_on_a_worker_stops_both_after_one_step_the_chief_saving_and_both_resume(ptb_quick, tmp_path,
                                                                                      uninterrupted):
    save_path = tmp_path / "run"
    with workers([trainer(ptb_quick, save_path)] * 2) as (chief, other):
        signal_when(other, r"^0\.2", signal.SIGINT)
        _, other_stderr = other.communicate(timeout=180)
        _, chief_stderr = chief.communicate(timeout=180)
    assert other.returncode == 128 + signal.SIGINT, other_stderr
    stopped = re.fullmatch(r"Stopped: stopped by signal 2; worker 0 saved epoch 1, step (\d+): rerun the same command "
                           r"on every worker to resume\n", other_stderr)
    assert stopped, other_stderr
    assert chief.returncode == 4, chief_stderr
    assert chief_stderr == (f"Stopped: stopped as another worker was; saved epoch 1, step {stopped.group(1)} to "
                            f"{save_path}: rerun the same command on every worker to resume\n")
    with workers([trainer(ptb_quick, save_path)] * 2) as processes:
        outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert re.search(rf"Resuming from .*: epoch 1, step {stopped.group(1)}\n", stdout)
        assert perplexities(stdout) == pytest.approx(uninterrupted, rel=1e-5)


def test_workers_that_would_train_in_two_precisions_stop_at_start_with_the_same_line(ptb_quick, tmp_path):
    """The chief in fp32, worker 1 in bf16, as --precision=auto would choose on two kinds of CPU: both stop before the
    first step, with one line that names the precision to give, and the chief's new folder goes."""
    save_path = tmp_path / "run"
    with workers([trainer(ptb_quick, save_path, "--precision=fp32"),
                  trainer(ptb_quick, save_path, "--precision=bf16")]) as processes:
        outputs = [process.communicate(timeout=300) for process in processes]
    message = ("error: the workers would train in different precisions, fp32 on worker 0 (the chief), bf16 on 1 of "
               "the others (another --precision, auto on another kind of CPU, or a resumed run's recorded one): give "
               "every worker --precision=fp32\n")
    for process, (stdout, stderr) in zip(processes, outputs):
        assert (process.returncode, stderr) == (2, message)
        assert "Epoch: 1" not in stdout
    assert not save_path.exists()


def test_ctrl_c_while_waiting_for_the_other_workers_ends_at_once(ptb_quick, tmp_path):
    """Worker 0 alone: its initializers wait for worker 1 (10 minutes); a signal ends it at once all the same."""
    with workers([trainer(ptb_quick, tmp_path / "run"), ["true"]]) as (chief, _):
        signal_when(chief, r"^Waiting for the 2 workers to start", signal.SIGINT)
        _, stderr = chief.communicate(timeout=120)
    assert chief.returncode == 128 + signal.SIGINT, stderr
    assert re.fullmatch(r"error: stopped by signal 2 \(SIGINT\)\n", stderr)
    assert not os.path.exists(tmp_path / "run")


def run_with_tf_config(tf_config, *args):
    """ptb_word_lm.py with the environment variable TF_CONFIG, in the process of tests/in_process.py."""
    return in_process.run("ptb_word_lm.py", *args, env={"TF_CONFIG": tf_config})


TWO = '"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}'


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", r"^error: TF_CONFIG is not JSON \(.*\): give TF_CONFIG like '\{\"cluster\""),
    ('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}',
     r"^error: TF_CONFIG's cluster must name workers only \(worker 0 is the chief\)"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     r"^error: TF_CONFIG's workers must be a list of host:port addresses"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     r"^error: TF_CONFIG names an address twice \(a:1, a:1\): give each worker its own port$"),
    ("{%s, \"task\": {\"type\": \"worker\", \"index\": 2}}" % TWO,
     r"^error: TF_CONFIG's task must be \{\"type\": \"worker\", \"index\": i\} with i from 0 to 1"),
    ('{"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}',
     r"^error: --replicas=1 x 3 workers = 3 replicas do not divide batch_size=20"),
    ("{%s, \"task\": {\"type\": \"worker\", \"index\": 1}}" % TWO,  # --replicas=2 below
     r"^error: --replicas=2: with TF_CONFIG each worker runs one replica per GPU, and on a machine without GPUs one"),
])
def test_a_malformed_tf_config_is_refused_at_start_with_one_line(tmp_path, tf_config, message):
    corpus = write_corpus(tmp_path / "corpus", " a b c d e f g h\n" * 40)
    replicas = ["--replicas=2"] if "index\": 1" in tf_config else []
    result = run_with_tf_config(tf_config, f"--data_path={corpus}", "--model=test", f"--save_path={tmp_path}/run",
                                *replicas)
    assert result.returncode == 2
    assert_one_line_error(result, message)
    assert not os.path.exists(tmp_path / "run")


def test_a_worker_whose_port_is_taken_says_so(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", " a b c d e f g h\n" * 40)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
        result = run_process(f"--data_path={corpus}", "--model=test", f"--save_path={tmp_path}/run",
                             env={"TF_CONFIG": json.dumps(tf_config)})
    assert result.returncode == 2
    assert_one_line_error(result, rf"^error: worker 0 cannot serve on 127.0.0.1:{port} \(.*\): give TF_CONFIG a free "
                                  "port for it$")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("args, message", [
    (["--replicas=3"], r"^error: --replicas=3 does not divide batch_size=20: each replica takes an equal share of "
                       r"the batch; use a replica count that divides 20$"),
    (["--replicas=0"], r"^error: flag --replicas=0: give an integer from 1 to 1024;"),
    (["--replicas=2", "--rnn_mode=basic", "--keep_prob=0.5"], r"^error: --replicas with dropout needs the LSTM in "
                                                              r"block or fast mode"),
])
def test_what_replicas_cannot_do_is_refused_at_start(tmp_path, args, message):
    corpus = write_corpus(tmp_path / "corpus", " a b c d e f g h\n" * 40)
    result = run_trainer(f"--data_path={corpus}", "--model=test", f"--save_path={tmp_path}/run", *args)
    assert result.returncode == 2
    assert_one_line_error(result, message)
    assert not os.path.exists(tmp_path / "run")
