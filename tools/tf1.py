"""TensorFlow's 1.x graph-and-session API, set up to work on today's TensorFlow.

Every module of the project imports TensorFlow through here: `from tf1 import tf`.
TensorFlow >= 2.16 ships Keras 3, and under it the tf.compat.v1 RNN cells
(BasicLSTMCell, MultiRNNCell) fail. They work with the `tf-keras` package when
TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is first imported, which is
why this has to happen in one place that is imported first.
"""
import contextlib
import os
import re
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ errors too: each surfaces as a Python exception


@contextlib.contextmanager
def quiet_stderr():
    """Silences file descriptor 2 for a moment.

    TensorFlow's CUDA build writes "Could not find cuda drivers" and the like from C++
    before its log level is read; on a CPU-only machine they are noise in every log.
    Errors still surface: a failing import raises after stderr is restored.
    """
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with quiet_stderr():
    import tensorflow.compat.v1 as tf  # noqa: E402

    tf.config.list_physical_devices("GPU")  # the CUDA probe, also noisy, done once here

tf.disable_eager_execution()
# The deprecation warnings of the 1.x API are not news here, and every error surfaces as an exception.
tf.logging.set_verbosity(tf.logging.FATAL)
warnings.filterwarnings("ignore", message=".* is deprecated and will be removed", category=UserWarning)


def session_config(num_threads=0):
    """Threads for TensorFlow's ops inside one op and across ops; 0 means one per core."""
    return tf.ConfigProto(intra_op_parallelism_threads=num_threads, inter_op_parallelism_threads=num_threads)


# What a TensorFlow error's message wraps around its cause: the graph's and the node's names, a traceback.
FRAMING = ("Graph execution error", "Detected at node", "File ", "Node:", "From /job", "[[")
FILE_SYSTEM = "No space|Permission denied|Read-only|quota|Input/output"


def error_summary(error):
    """The line of a TensorFlow error that says what went wrong, at most 200 characters: the file system's cause
    where one is named ("PATH; No space left on device" -> "No space left on device"), else its first line that
    is not framing (the node, the graph, the traceback)."""
    message = getattr(error, "message", str(error)).split("Original error:")[-1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line.split(";")[-1].strip() for line in lines if re.search(FILE_SYSTEM, line)]
    lines = [line for line in lines if not line.startswith(FRAMING) and not line.endswith("(most recent call last):")]
    return (causes or lines or [error.__class__.__name__])[0][:200]
