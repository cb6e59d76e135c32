"""Trains the word-level LSTM language model of Zaremba et al. (2014) on the Penn Treebank.

"Recurrent Neural Network Regularization", https://arxiv.org/abs/1409.2329

    python ptb_word_lm.py --model=small                      # fetches PTB into data/ if needed
    python ptb_word_lm.py --data_path=simple-examples/data --model=medium --save_path=runs/medium

| config | epochs | train ppl | valid ppl | test ppl (paper) |
| ------ | ------ | --------- | --------- | ---------------- |
| small  | 13     | 37.99     | 121.39    | 115.91 (114.5)   |
| medium | 39     | 48.45     | 86.16     |  82.07  (82.7)   |
| large  | 55     | 37.87     | 82.62     |  78.29  (78.4)   |

(the TensorFlow tutorial's numbers; what this code measured on this machine is in README.md.)
"""
import os
import sys
import time

from absl import app, flags

import checkpoint
import configs
import reader
from model import PRECISIONS, RNN_MODES, PTBModel, check_rnn_mode, default_rnn_mode, run_epoch
from tf1 import session_config, tf

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_string("data_path", None, "Folder with ptb.{train,valid,test}.txt; default: data/ of this "
                    "project, where the corpus is downloaded if missing.")
flags.DEFINE_enum("model", "small", list(configs.CONFIGS), "Model config.")
flags.DEFINE_string("save_path", None, "Folder for the checkpoint, config and vocabulary.")
flags.DEFINE_enum("rnn_mode", None, list(RNN_MODES), "How the LSTM runs: basic (BasicLSTMCell, the "
                  "reference), block (fused BlockLSTM kernel), cudnn (GPU). Default: the fastest here.")
flags.DEFINE_enum("precision", "fp32", list(PRECISIONS), "Matmul precision; variables, loss and gradient "
                  "clipping stay fp32. bf16: the softmax in bfloat16 (BlockLSTM has no bf16 kernel); fp16: the "
                  "softmax and the LSTM in float16.")
flags.DEFINE_bool("use_fp16", False, "The tutorial's flag: the same as --precision=fp16.")
flags.DEFINE_integer("max_max_epoch", None, "Train this many epochs instead of the config's.")
flags.DEFINE_integer("seed", None, "Graph-level random seed (initialisation and dropout).")
flags.DEFINE_integer("test_window", 100, "Window length of the test pass (batch size 1); any length gives "
                     "the tutorial's num_steps=1 result, longer windows just run faster. Not in basic mode.")
flags.DEFINE_integer("num_threads", 0, "Threads for TensorFlow's ops (0: one per core).")
FLAGS = flags.FLAGS


def prepare_save_path(path):
    """Creates the folder and makes sure it can be written, before hours of training."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise reader.DataError(f"cannot write to --save_path={path} ({e.strerror}): choose a writable folder")



def train(data, config, rnn_mode, precision="fp32", save_path=None):
    """Trains for config.max_max_epoch epochs, prints the perplexities, returns the test perplexity."""
    with tf.Graph().as_default():
        if FLAGS.seed is not None:
            tf.set_random_seed(FLAGS.seed)
        initializer = tf.random_uniform_initializer(-config.init_scale, config.init_scale)
        test_steps = 1 if rnn_mode == "basic" else None  # batch 1: every word sees all the text before it
        with tf.variable_scope("Model", reuse=None, initializer=initializer):
            m = PTBModel(True, config, config.batch_size, config.num_steps, rnn_mode, precision)
        with tf.variable_scope("Model", reuse=True, initializer=initializer):
            mvalid = PTBModel(False, config, config.batch_size, config.num_steps, rnn_mode, precision)
            mtest = PTBModel(False, config, 1, test_steps, rnn_mode, precision)
        saver = tf.train.Saver(tf.global_variables(), max_to_keep=1)

        with tf.Session(config=session_config(FLAGS.num_threads)) as session:
            session.run(tf.global_variables_initializer())
            start = time.time()
            for i in range(config.max_max_epoch):
                m.assign_lr(session, configs.learning_rate(config, i))
                print(f"Epoch: {i + 1} Learning rate: {session.run(m.lr):.3f}", flush=True)
                train_perplexity = run_epoch(session, m, data.train, m.train_op, verbose=True)
                print(f"Epoch: {i + 1} Train Perplexity: {train_perplexity:.3f}", flush=True)
                valid_perplexity = run_epoch(session, mvalid, data.valid)
                print(f"Epoch: {i + 1} Valid Perplexity: {valid_perplexity:.3f}", flush=True)
                if save_path:
                    checkpoint.save(session, saver, save_path, config, data.vocab)
            train_time = time.time() - start
            test_perplexity = run_epoch(session, mtest, data.test, window=FLAGS.test_window)
            print(f"Test Perplexity: {test_perplexity:.3f}")
            print(f"Wall time: {time.time() - start:.0f} s (training and validation {train_time:.0f} s, "
                  f"test pass {time.time() - start - train_time:.0f} s)", flush=True)
            return test_perplexity


def main(argv):
    del argv
    try:
        config = configs.get_config(FLAGS.model)
        if FLAGS.max_max_epoch is not None:
            config.max_max_epoch = FLAGS.max_max_epoch
        rnn_mode = FLAGS.rnn_mode or default_rnn_mode()
        check_rnn_mode(rnn_mode)
        if FLAGS.save_path:
            prepare_save_path(FLAGS.save_path)
        data_path = FLAGS.data_path or reader.maybe_download(os.path.join(HERE, "data"))
        data = reader.load_ptb(data_path)
        config.vocab_size = len(data.vocab)
        for split in ("train", "valid"):
            reader.epoch_size(len(getattr(data, split)), config.batch_size, config.num_steps)
        reader.epoch_size(len(data.test), 1, 1)
    except (reader.DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    precision = "fp16" if FLAGS.use_fp16 else FLAGS.precision
    print(f"Model: {FLAGS.model}, rnn_mode: {rnn_mode}, precision: {precision}, vocabulary: {config.vocab_size} "
          f"words, train/valid/test: {len(data.train)}/{len(data.valid)}/{len(data.test)} words", flush=True)
    train(data, config, rnn_mode, precision, FLAGS.save_path)


if __name__ == "__main__":
    app.run(main)
