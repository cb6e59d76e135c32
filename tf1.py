"""TensorFlow's 1.x graph-and-session API, set up to work on today's TensorFlow.

Every module of the project imports TensorFlow through here: `from tf1 import tf`.
TensorFlow >= 2.16 ships Keras 3, and under it the tf.compat.v1 RNN cells
(BasicLSTMCell, MultiRNNCell) fail. They work with the `tf-keras` package when
TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is first imported, which is
why this has to happen in one place that is imported first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the logs

import tensorflow.compat.v1 as tf  # noqa: E402

tf.disable_eager_execution()
tf.logging.set_verbosity(tf.logging.ERROR)  # the deprecation warnings of the 1.x API are not news here
