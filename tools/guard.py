"""The guard: a training whose numbers stop being finite, or whose LSTM stops learning in its first steps, stops
at once, with one line and exit code 3.

A loss beyond what exp() can hold (a perplexity of inf), a gradient norm that is not finite, weights that are
not finite, a valid or test perplexity that is not finite: each stops training, and the message says what
happened, that the last good checkpoint is kept, and to lower --learning_rate. A checkpoint is written only of
weights that are finite and score a finite loss on a window of validation text, so the folder's latest
checkpoint is always one a rerun can resume from.

A run that stopped learning: with the paper's large config, some seeds send the LSTM's cell states up without
bound within the first minutes (results/first-steps.txt): a cell whose forget and input gates sit at 1 adds
about one to |c| per word, tanh(c) is then +-1, no gradient reaches its gates, and the loss stays near a uniform
guess's for the rest of the run. check_learning looks at the carried cell state during the first tenth of epoch
1: a |c| beyond ptb_word_lm.py's --max_cell_state (1000) is a cell that has grown for that many words without
forgetting, which no learning run measured came near (docs/reproducing.md says why this criterion).
"""
import math

import numpy as np

from model import MAX_LOG_FLOAT
from tools import checkpoint, cli

DIVERGED = 3  # exit code


class StoppedLearning(cli.Stop):
    """The LSTM stopped learning in its first steps: at `step`, a cell state of `value`, beyond `limit`."""

    def __init__(self, step, value, limit):
        super().__init__(f"the LSTM stopped learning at epoch 1, step {step}: a cell state reached {value:.6g}, "
                         f"beyond --max_cell_state={limit:g} (a saturated cell grows by about one per word)", DIVERGED)
        self.step, self.value, self.limit = step, value, limit


class Guard:
    """Checks a run's numbers as they come; save_path: where its checkpoints are (None: nothing is saved)."""

    def __init__(self, save_path=None):
        self.save_path = save_path

    def check_step(self, cost, num_steps, grad_norm, epoch, step):
        """A training step's cost (its loss summed over num_steps words: ln(vocab_size) per word at the start) and
        gradient norm; epoch 0-based, step the windows done."""
        if not (cost / num_steps <= MAX_LOG_FLOAT and math.isfinite(grad_norm)):  # NaN fails every comparison
            self.stop(f"the loss became {cost} (gradient norm {grad_norm}) at epoch {epoch + 1}, step {step}")

    @staticmethod
    def checks_learning(epoch, step, epoch_size):
        """Whether check_learning looks at this step: the first tenth of epoch 1 (epoch 0-based)."""
        return epoch == 0 and step <= max(epoch_size // 10, 1)

    @staticmethod
    def check_learning(state, step, limit):
        """Whether the carried LSTM state [layers, (c, h), batch, hidden] after `step` windows holds a cell state
        beyond `limit`. The GRU and tanh RNN carry h only, within (-1, 1): never flagged."""
        if state is None or state.shape[1] != 2:
            return
        largest = float(np.abs(state[:, 0]).max())
        if not largest <= limit:  # NaN too
            raise StoppedLearning(step, largest, limit)

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
