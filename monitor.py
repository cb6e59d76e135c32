"""What a training run leaves behind to be watched by, all under its --save_path:

    events.out.tfevents.*   TensorBoard: tensorboard --logdir=SAVE_PATH
    metrics.jsonl           one JSON line an epoch: learning rate, perplexities, words/s
    perplexity.png          train and valid perplexity by epoch, redrawn after every epoch
"""
import json
import os
import threading

import checkpoint
from tf1 import tf

METRICS, PLOT = "metrics.jsonl", "perplexity.png"


def _thread_error(args, default=threading.excepthook):
    """The summary writer's thread dies with a traceback when the disk is full; RunLog.flush re-raises its error."""
    if args.thread is None or args.thread.name != "EventLoggerThread":
        default(args)


threading.excepthook = _thread_error


class RunLog:
    """Writes the run's summaries; with no save_path it writes nothing. `model`: the config's name, for the plot."""

    def __init__(self, save_path, model=None):
        self.save_path, self.model = save_path, model
        self.writer = tf.summary.FileWriter(save_path) if save_path else None

    def scalars(self, step, **values):
        """TensorBoard scalars, one curve a name."""
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


def duration(seconds):
    """3725 -> '1h02m', 65 -> '1m05s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
