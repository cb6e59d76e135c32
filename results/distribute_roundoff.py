"""Are two replicas' perplexities on the small config, which part from one process's after ~100
steps (results/distribute-speed-*.txt), a bug or rounding? Trains 40,000 words of the small config, seed 1,
three ways: one process, 2 replicas in one process, and one process whose initial weights are multiplied
by 1 + 1e-7·N(0, 1) (a rounding error's size); prints the relative difference of each step's loss from the
first. If the replicas' difference grows like the perturbed run's, it is rounding amplified by training.
Usage, from the project root: python results/distribute_roundoff.py ../shared/data/ptb"""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The equality tests' one-epoch trainer (tests/test_distribute.py), on the small config.
ONE_EPOCH = re.search(r'ONE_EPOCH = """(.*?)"""', open(os.path.join(ROOT, "tests", "test_distribute.py")).read(),
                      re.S).group(1).replace("data.train[:20000]", "data.train[:40000]").replace('"test"', '"small"')
PERTURB = """m.assign_lr(run.session, 1.0)
with run.graph.as_default():
    rng = np.random.RandomState(0)
    for v in tf.trainable_variables():
        value = run.session.run(v)
        v.load((value * (1 + 1e-7 * rng.standard_normal(value.shape))).astype(value.dtype), run.session)
"""


def losses(folder, name, replicas, code=ONE_EPOCH):
    out = os.path.join(folder, name + ".npz")
    subprocess.run([sys.executable, "-c", code, sys.argv[1], out, "1", str(replicas)], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT), stderr=subprocess.DEVNULL)
    return np.load(out)["losses"]


with tempfile.TemporaryDirectory() as folder:
    one = losses(folder, "one", 1)
    others = {"2 replicas": losses(folder, "two", 2),
              "1 process, weights x (1 + 1e-7 noise)": losses(folder, "perturbed", 1,
                                                              ONE_EPOCH.replace("m.assign_lr(run.session, 1.0)\n", PERTURB))}
steps = [0, 5, 10, 20, 30, 40, 60, 90]
print("relative difference of the loss from one process's, at step " + ", ".join(map(str, steps)))
for label, other in others.items():
    print(f"{label}: " + ", ".join(f"{abs(other[i] - one[i]) / one[i]:.1e}" for i in steps))
