"""The divergence guard: a training whose numbers stop being finite stops at once, with one line and exit code 3.

A loss beyond what exp() can hold (a perplexity of inf), a gradient norm that is not finite, weights that are
not finite, a valid or test perplexity that is not finite: each stops training, and the message says what
happened, that the last good checkpoint is kept, and to lower --learning_rate. A checkpoint is written only of
weights that are finite and score a finite loss on a window of validation text, so the folder's latest
checkpoint is always one a rerun can resume from.
"""
import math

from model import MAX_LOG_FLOAT
from tools import checkpoint, cli

DIVERGED = 3  # exit code


class Guard:
    """Checks a run's numbers as they come; save_path: where its checkpoints are (None: nothing is saved)."""

    def __init__(self, save_path=None):
        self.save_path = save_path

    def check_step(self, cost, num_steps, grad_norm, epoch, step):
        """A training step's cost (its loss summed over num_steps words: ln(vocab_size) per word at the start) and
        gradient norm; epoch 0-based, step the windows done."""
        if not (cost / num_steps <= MAX_LOG_FLOAT and math.isfinite(grad_norm)):  # NaN fails every comparison
            self.stop(f"the loss became {cost} (gradient norm {grad_norm}) at epoch {epoch + 1}, step {step}")

    def check_perplexity(self, perplexity, what):
        if not math.isfinite(perplexity):
            self.stop(what)

    def check_weights(self, finite, cost, num_steps, epoch, step):
        """Before a save: whether every weight is finite, and their cost on a window of num_steps validation words."""
        if not (finite and cost / num_steps <= MAX_LOG_FLOAT):
            problem = "not finite" if not finite else f"diverged (a loss of {cost:.3g} on validation text)"
            self.stop(f"the weights to be saved at epoch {epoch + 1}, step {step} are {problem}")

    def stop(self, what):
        if self.save_path and checkpoint.latest(self.save_path):
            kept = f"the last good checkpoint in {self.save_path} is kept"
        else:
            kept = "nothing was saved" + (" (it diverged before its first checkpoint)" if self.save_path else "")
        raise cli.Stop(f"{what}: training stopped, {kept}; lower --learning_rate", DIVERGED)
