"""Valid perplexity of dynamic evaluation in the RMS form (lm.py --dynamic_rms) on the small checkpoint
for a list of settings, the gradient statistics gathered once on the first WORDS words of ptb.train.txt.
Usage, from the project root: python results/small_rms_trials.py WORDS LR,DECAY,WINDOW,EPS [...]"""
import sys, time
sys.path.insert(0, ".")  # run from the project root
import lm as L
from tools import adapt
from tools.dynamic_eval import DynamicEvaluation
L.FLAGS(["lm.py"])
model = L.LanguageModel("runs/small")
D = "../shared/data/ptb/"
train, valid = L.read_ids(model, D + "ptb.train.txt"), L.read_ids(model, D + "ptb.valid.txt")
words = int(sys.argv[1])
ad = DynamicEvaluation(model, train[:words + 1])
for spec in sys.argv[2:]:
    lr, decay, window, eps = spec.split(",")
    t = time.time()
    log_p, _ = ad.dynamic_pass(valid, float(lr), float(decay), int(window), eps=float(eps))
    print(f"lr={lr} decay={decay} window={window} eps={eps} stat_words={words}: valid {adapt.perplexity(log_p):.3f} ({time.time()-t:.0f} s)", flush=True)
