"""What a training run leaves behind to be watched by, all under its --save_path:

    events.out.tfevents.*   TensorBoard: tensorboard --logdir=SAVE_PATH
    metrics.jsonl           one JSON line per epoch: learning rate, perplexities, words/s
    perplexity.png          train and valid perplexity by epoch, redrawn after every epoch
"""
import glob
import json
import os
import threading
import time

from tools import checkpoint
from tools.tf1 import tf

METRICS, PLOT, EVENTS = "metrics.jsonl", "perplexity.png", "events.out.tfevents.*"


def quiet_summary_thread_errors():
    """The summary writer's thread dies with a traceback when the disk is full; RunLog.flush re-raises its error
    in one line instead. Set once, by the first RunLog that writes."""
    default = threading.excepthook
    if getattr(default, "quiets_summaries", False):
        return

    def excepthook(args):
        if args.thread is None or args.thread.name != "EventLoggerThread":
            default(args)

    excepthook.quiets_summaries = True
    threading.excepthook = excepthook


class RunLog:
    """Writes the run's summaries; with no save_path it writes nothing. `model`: the config's name, for the plot."""

    def __init__(self, save_path, model=None):
        self.save_path, self.model = save_path, model
        self.writer = None
        if save_path:
            quiet_summary_thread_errors()
            self.events_before = set(glob.glob(os.path.join(save_path, EVENTS)))
            self.writer = tf.summary.FileWriter(save_path)

    def scalars(self, step, **values):
        """TensorBoard scalars, one curve per name."""
        if self.writer:
            self.writer.add_summary(tf.Summary(value=[tf.Summary.Value(tag=k, simple_value=v)
                                                      for k, v in values.items()]), step)
            self.flush(self.writer.flush)

    def flush(self, flush):
        """The writer's thread keeps what failed (a full disk) and raises it here: one line, not a traceback."""
        try:
            flush()
        except Exception as e:  # whatever the thread met: an OSError, a TensorFlow error ("FILE; No space left ...")
            file, _, cause = (str(e).splitlines() or [type(e).__name__])[0].rpartition("; ")
            if os.path.basename(file).startswith("events.out.tfevents"):
                raise OSError(0, cause, file)
            raise OSError(0, f"the TensorBoard summaries could not be written ({file + '; ' if file else ''}{cause})",
                          self.save_path)

    def epoch(self, record):
        """Adds (or, for an epoch redone after a resume, replaces) an epoch's line, and redraws the plot."""
        if self.save_path:
            self.write([r for r in read_metrics(self.save_path) if r["epoch"] != record["epoch"]] + [record])

    def test(self, step, test_perplexity):
        """The test perplexity: a scalar at the global step like the others, and in the last epoch's record."""
        self.scalars(step, test_perplexity=test_perplexity)
        records = read_metrics(self.save_path) if self.save_path else []
        if records:
            self.write(records[:-1] + [dict(records[-1], test_perplexity=test_perplexity)])

    def write(self, records):
        """metrics.jsonl and the plot, each whole: a failed write (full disk) leaves the old file."""
        checkpoint.write_atomically(os.path.join(self.save_path, METRICS), "".join(json.dumps(r) + "\n"
                                                                                   for r in records))
        plot(records, os.path.join(self.save_path, PLOT), plot_title(self.model, records))

    def close(self):
        if self.writer:
            self.flush(self.writer.close)

    def discard(self):
        """Closes the summaries and removes the TensorBoard files this RunLog wrote (metrics.jsonl and the plot
        are written at epoch ends only: a run discarded inside its first epoch wrote none)."""
        if self.writer:
            self.writer.close()
            for path in set(glob.glob(os.path.join(self.save_path, EVENTS))) - self.events_before:
                os.remove(path)


def read_metrics(save_path):
    """The epochs' records; ValueError if the file is not one RunLog wrote."""
    path = os.path.join(save_path, METRICS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
        raise ValueError("a line without an epoch number")
    return records


def plot_title(model, records):
    """The plot's title: the config's name, and the test perplexity once the last epoch has one."""
    title = f"PTB word-level LSTM, {model} config" if model else "PTB word-level LSTM"
    test = records[-1].get("test_perplexity") if records else None
    return title + (f": test perplexity {test:.2f}" if test is not None else "")


def plot(records, path, title):
    import matplotlib  # imported here: only a run with --save_path draws

    matplotlib.use("Agg")
    import matplotlib.ticker
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r["train_perplexity"] for r in records], "o-", label="train")
    ax.plot(epochs, [r["valid_perplexity"] for r in records], "s-", label="valid")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with checkpoint.replacing(path) as tmp:  # whole, then renamed: never a half-drawn plot
            fig.savefig(tmp, format="png", metadata={"Title": title})
    finally:
        plt.close(fig)


class ProgressLines:
    """About ten lines per training epoch: how far it is, the running perplexity, words per second, and the time
    left for the epoch and the run. words_per_step: batch size x num_steps; epochs: the run's."""

    def __init__(self, words_per_step, epochs):
        self.words_per_step, self.epochs = words_per_step, epochs
        self.epoch, self.first_step, self.epoch_start = 0, 0, time.time()

    def start_epoch(self, epoch, first_step=0):
        """Epoch `epoch` (0-based) starts, at first_step when resumed inside it."""
        self.epoch, self.first_step, self.epoch_start = epoch, first_step, time.time()

    @staticmethod
    def due(step, epoch_size):
        """Whether a line is due after `step` windows: ten times per epoch, the first after 11 windows."""
        return epoch_size >= 10 and (step - 1) % (epoch_size // 10) == 10

    def print(self, position, epoch_size):
        """Prints the line; returns (words per second, the running perplexity)."""
        elapsed = time.time() - self.epoch_start
        seconds_per_step = elapsed / (position.step - self.first_step)
        epoch_left = (epoch_size - position.step) * seconds_per_step
        run_left = epoch_left + (self.epochs - self.epoch - 1) * epoch_size * seconds_per_step
        wps = (position.step - self.first_step) * self.words_per_step / elapsed
        print(f"{position.step / epoch_size:.3f} perplexity: {position.perplexity:.3f} speed: {wps:.0f} wps "
              f"eta: epoch {duration(epoch_left)}, run {duration(run_left)}", flush=True)
        return wps, position.perplexity


def duration(seconds):
    """3725 -> '1h02m', 65 -> '1m05s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
