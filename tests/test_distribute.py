"""Data-parallel training (distribute.py) computes what one process computes: the loss at every step, the
weights after an epoch, the dropout masks, and checkpoints that resume with any replica count.
Test config, real corpus; different graphs round differently, so the comparisons are to 1e-5 relative."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_corpus
from test_cli import assert_one_line_error, run as run_trainer
from test_training import perplexities, start_and_stop

# One process and two replicas train an epoch side by side, in a process of its own: logical CPU devices
# can only be set up before TensorFlow's runtime starts, which any earlier test in this process has done.
SIDE_BY_SIDE = """
import json, sys
import numpy as np
import configs, distribute, ptb_word_lm, reader
from model import run_epoch
from tf1 import tf

ptb_word_lm.FLAGS(["ptb_word_lm.py"])
data_path, out, options = sys.argv[1], sys.argv[2], sys.argv[3:]
strategy = distribute.local_strategy(2)
data = reader.load_ptb(data_path)
data = data._replace(train=data.train[:20000])
config = configs.get_config("test")
config.vocab_size = len(data.vocab)
for option in options:
    name, value = option.split("=")
    setattr(config, name, json.loads(value))
results = {}
for name, replicas in (("one", None), ("two", strategy)):
    trainer = ptb_word_lm.Trainer(data, config, "fast", seed=5, strategy=replicas)
    trainer.m.assign_lr(trainer.session, 1.0)
    losses = []
    run_epoch(trainer.session, trainer.m, data.train, trainer.m.train_op,
              on_step=lambda position, vals, epoch_size: losses.append(vals["cost"]))
    results[name + "_losses"] = np.array(losses)
    with trainer.graph.as_default():
        for v, value in zip(tf.trainable_variables(), trainer.session.run(tf.trainable_variables())):
            results[name + ":" + v.op.name] = value
np.savez(out, **results)
"""


@pytest.mark.parametrize("options", [[], ["keep_prob=0.5"], ["keep_prob=0.6", "variational_dropout=true",
                                                              "word_keep_prob=0.8"]],
                         ids=["no-dropout", "dropout", "variational-and-word-dropout"])
def test_two_replicas_give_the_loss_of_every_step_and_the_weights_of_one_process(ptb_path, tmp_path, options):
    out = tmp_path / "results.npz"
    result = subprocess.run([sys.executable, "-c", SIDE_BY_SIDE, ptb_path, str(out), *options], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    results = np.load(out)
    one, two = results["one_losses"], results["two_losses"]
    assert len(one) == len(two) == 499
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert one[-1] < 0.8 * one[0]  # it learned something, so the weights below moved
    names = [k[4:] for k in results.files if k.startswith("one:")]
    assert len(names) == 5  # embedding, kernel, bias, softmax w and b
    for name in names:
        np.testing.assert_allclose(results["two:" + name], results["one:" + name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)


FLAGS = ["--model=test", "--train_words=20000", "--max_max_epoch=2", "--seed=5", "--keep_prob=0.5"]


def test_a_checkpoint_of_two_replicas_resumes_in_one_process(ptb_path, tmp_path):
    """Stopped inside epoch 1 with 2 replicas, resumed with 1 (the state of every row is in the checkpoint)."""
    uninterrupted = run_trainer(f"--data_path={ptb_path}", *FLAGS)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    code, stderr = start_and_stop(ptb_path, tmp_path, signal.SIGTERM, r"Epoch: 1 Learning rate.*\n.*\n.*\n0\.2",
                                  "--replicas=2", flags=FLAGS)
    assert code == 128 + signal.SIGTERM, stderr
    resumed = run_trainer(f"--data_path={ptb_path}", *FLAGS, f"--save_path={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from .*: epoch 1, step [1-9]\d*", resumed.stdout)
    expected = perplexities(uninterrupted.stdout)
    assert perplexities(resumed.stdout) == pytest.approx(expected, rel=1e-5)
    # and the other way: one process's checkpoint, at the end of epoch 1, resumed with 4 replicas
    again = run_trainer(f"--data_path={ptb_path}", *FLAGS[:2], "--max_max_epoch=1", *FLAGS[3:],
                        f"--save_path={tmp_path}/one")
    assert again.returncode == 0, again.stderr
    four = run_trainer(f"--data_path={ptb_path}", *FLAGS, f"--save_path={tmp_path}/one", "--replicas=4")
    assert four.returncode == 0, four.stderr
    assert re.search(r"Resuming from .*: epoch 2, step 0", four.stdout)
    assert perplexities(four.stdout) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--replicas=3"], r"^error: --replicas=3 does not divide batch_size=20: each replica takes an equal share of "
                       r"the batch; give a divisor of 20$"),
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
