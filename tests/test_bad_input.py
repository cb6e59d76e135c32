"""Bad input to both programs, as a user types it: each ends with a non-zero exit, one line on stderr, no
traceback, and every file that was there before (corpus, checkpoint folders, the user's own files) unchanged."""
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import in_process
from conftest import ROOT, write_corpus

SENTENCES = "".join(f" the {a} sat on the {b}\n" for a in ("cat", "dog", "rat") for b in ("mat", "rug")) * 40


def poison(folder, name="Model/softmax_b"):
    """Sets variable `name` of the folder's latest checkpoint to nan, as a copy gone wrong or another tool might."""
    from tools.tf1 import tf

    prefix = tf.train.latest_checkpoint(str(folder))
    weights = tf.train.load_checkpoint(prefix)
    with tf.Graph().as_default():
        variables = {}
        for n in weights.get_variable_to_shape_map():
            value = weights.get_tensor(n)
            variables[n] = tf.Variable(np.full_like(value, np.nan) if n == name else value)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver(variables).save(session, prefix, write_meta_graph=False, write_state=False)


def run(program, args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, program), *args], input=stdin, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def snapshot(root):
    """{path: md5} of every regular file under root, and the kind of everything else (a FIFO is not opened)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    found[path] = hashlib.md5(f.read()).hexdigest()
            else:
                found[path] = "folder" if os.path.isdir(path) else "other"
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A corpus, a trained checkpoint folder, and the damaged and foreign folders the cases below point at."""
    root = tmp_path_factory.mktemp("bad")
    corpus = write_corpus(root / "corpus", SENTENCES)
    trained = run("ptb_word_lm.py", [f"--data_path={corpus}", "--model=test", f"--save_path={root}/ckpt", "--seed=1"])
    assert trained.returncode == 0, trained.stderr
    ckpt = root / "ckpt"
    paths = {"root": str(root), "corpus": corpus, "ckpt": str(ckpt)}

    def variant(name, change):
        shutil.copytree(ckpt, root / name)
        change(root / name)
        paths[name] = str(root / name)

    def edit_config(**fields):
        return lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                                    **fields}))

    variant("noindex", lambda d: os.remove(d / "checkpoint"))
    variant("junkindex", lambda d: (d / "checkpoint").write_bytes(bytes(range(256))))
    variant("staleindex", lambda d: (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n'))
    variant("truncated", lambda d: [open(p, "r+b").truncate(100) for p in d.glob("model.ckpt-*.data-*")])
    variant("badcell", edit_config(cell="tree"))
    variant("badsize", edit_config(hidden_size=2.5))
    variant("badjson", lambda d: (d / "config.json").write_text("{not json"))
    variant("tied", edit_config(tie_embeddings=True))  # an untied run's weights: softmax_w would be dropped
    variant("dupvocab", lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text().replace("dog\n", "cat\n")))
    variant("noeos", lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text().replace("<eos>", "<s>")))
    variant("nonfinite", poison)
    variant("legacy", lambda d: os.remove(d / "run.json"))  # as written before run.json
    variant("badmetrics", lambda d: (d / "metrics.jsonl").write_bytes((d / "metrics.jsonl").read_bytes()[:-9]
                                                                      + b"\x00junk\n"))
    variant("badmarker", lambda d: (d / "run.json").write_text('{"written_by": "me"}\n'))
    # Folders of the user's own files, and a corpus of the same vocabulary size but other words.
    for name, files in {"notes": {"notes.txt": "my notes\n"}, "userconfig": {"config.json": '{"lr": 3}\n'},
                        "uservocab": {"vocab.txt": "a\nb\n"}, "usermetrics": {"metrics.jsonl": "epoch,loss\n1,2\n"},
                        "userplot": {"perplexity.png": "my plot\n"}, "usernote": {"checkpoint": "my note\n"},
                        "userrun": {"run.json": "{}\n", "metrics.jsonl": '{"epoch": 1}\n'},
                        "folder/inner": {"x.txt": "x\n"}}.items():
        os.makedirs(root / name)
        for file, text in files.items():
            (root / name / file).write_text(text)
    paths["other"] = write_corpus(root / "other", SENTENCES.replace("cat", "cow"))
    paths["shortvalid"] = write_corpus(root / "shortvalid", SENTENCES, valid=" the cat sat on the mat\n" * 2)
    paths["fifo_corpus"] = write_corpus(root / "fifo_corpus", SENTENCES)
    paths["one_word_corpus"] = write_corpus(root / "one_word_corpus", "cat cat cat")
    os.remove(root / "fifo_corpus" / "ptb.train.txt")
    os.mkfifo(root / "fifo_corpus" / "ptb.train.txt")
    os.mkfifo(root / "fifo")
    (root / "file").write_text("a file, not a folder\n")
    (root / "one_word.txt").write_text("cat")  # no line end, so no <eos>: one word
    (root / "two_words.txt").write_text("the cat")
    (root / "latin1.txt").write_bytes("caf\xe9 the cat\n".encode("latin-1"))
    (root / "glove_nan.txt").write_text("cat nan 1\n")
    paths["folder"], paths["fifo"] = str(root / "folder"), str(root / "fifo")
    return paths


T = "ptb_word_lm.py"
L = "lm.py"
B = "benchmark.py"
HELP = "; python benchmark.py --help lists the flags$"
NOT_OURS = ("^error: --save_path={{root}}/{} holds {} but no run.json, which a training run writes first: they are "
            "not a run's files; give an empty or a new folder$")
NOT_FINITE = (r"^error: the weights {nonfinite}/model.ckpt-41 are not finite \(Model/softmax_b holds nan or inf\): "
              "they cannot be used; give the folder of a sound training run$")
EVAL = ["eval", "--save_path={ckpt}", "--input={corpus}/ptb.test.txt"]
FLAG = r"^error: flag --{}: give an? (integer|number) "
# (program, arguments, what the one line says, exit code); {name} is a path of env above.
CASES = [
    (T, ["--test_window=0"], FLAG.format(r"test_window=0") + "of at least 1", 2),
    (T, ["--test_window=-5"], FLAG.format("test_window=-5"), 2),
    (T, ["--num_threads=-1"], FLAG.format("num_threads=-1") + r"from 0 \(one per core\) to 1024", 2),
    (T, ["--num_threads=abc"], "^error: flag --num_threads=abc: invalid literal", 2),
    (T, ["--keep_prob=0"], FLAG.format(r"keep_prob=0.0") + "above 0 and at most 1", 2),
    (T, ["--keep_prob=-0.5"], FLAG.format(r"keep_prob=-0.5"), 2),
    (T, ["--keep_prob=1.5"], FLAG.format(r"keep_prob=1.5"), 2),
    (T, ["--keep_prob=nan"], FLAG.format(r"keep_prob=nan"), 2),
    (T, ["--word_keep_prob=0"], FLAG.format(r"word_keep_prob=0.0"), 2),
    (T, ["--word_keep_prob=2"], FLAG.format(r"word_keep_prob=2.0"), 2),
    (T, ["--state_keep_prob=0"], FLAG.format(r"state_keep_prob=0.0"), 2),
    (T, ["--state_keep_prob=-1"], FLAG.format(r"state_keep_prob=-1.0"), 2),
    (T, ["--embedding_size=0"], FLAG.format("embedding_size=0") + "of at least 1", 2),
    (T, ["--embedding_size=-3"], FLAG.format("embedding_size=-3"), 2),
    (T, ["--seed=-1"], FLAG.format("seed=-1") + "from 0 to 2147483647", 2),
    (T, ["--seed=2147483648"], FLAG.format("seed=2147483648"), 2),
    (T, ["--train_words=0"], FLAG.format("train_words=0"), 2),
    (T, ["--train_words=-10"], FLAG.format("train_words=-10"), 2),
    (T, ["--data_path={one_word_corpus}"], r"^error: .*one_word_corpus/ptb.train.txt has one word in its vocabulary, "
                                           r"'cat' \(and no line end, read as <eos>\): a language model needs two", 2),
    (T, ["--max_vocab=2"], FLAG.format("max_vocab=2") + r"of at least 3 \(<eos>, <unk> and one word\)", 2),
    (T, ["--max_vocab=0"], FLAG.format("max_vocab=0"), 2),
    (T, ["--max_max_epoch=-1"], FLAG.format("max_max_epoch=-1") + "of at least 0", 2),
    (T, ["--max_epoch=-1"], FLAG.format("max_epoch=-1"), 2),
    (T, ["--lr_decay=-0.5"], FLAG.format(r"lr_decay=-0.5") + "above 0", 2),
    (T, ["--lr_decay=0"], FLAG.format(r"lr_decay=0.0"), 2),
    (T, ["--learning_rate=-1"], FLAG.format(r"learning_rate=-1.0") + "from 0 to 3.4e38", 2),
    (T, ["--learning_rate=1e39"], FLAG.format(r"learning_rate=1e\+39"), 2),
    (T, ["--learning_rate=inf"], FLAG.format(r"learning_rate=inf"), 2),
    (T, ["--checkpoint_minutes=0"], FLAG.format(r"checkpoint_minutes=0.0") + "above 0", 2),
    (T, ["--checkpoint_minutes=-1"], FLAG.format(r"checkpoint_minutes=-1.0"), 2),
    (T, ["--model=huge"], "^error: flag --model=huge: value should be one of", 2),
    (T, ["--precision=fp8"], "^error: flag --precision=fp8: value should be one of", 2),
    (T, ["--foo=1"], "^error: Unknown command line flag 'foo'", 2),
    (T, ["--rnn_mode=cudnn"], r"^error: flag --rnn_mode=cudnn: value should be one of <basic\|block\|fast>", 2),
    (T, ["--embedding_size=3", "--tie_embeddings"], r"^error: tied embeddings need embedding_size \(3\) = hidden", 2),
    (T, ["--state_keep_prob=0.5", "--rnn_mode=block"], "^error: dropout on the recurrent state needs", 2),
    (T, ["--data_path=/nonexistent/ptb"], "^error: data folder /nonexistent/ptb does not exist", 2),
    (T, ["--data_path={fifo_corpus}"], r"^error: .*ptb.train.txt is not a regular file", 2),
    (T, ["--data_path={root}/one_word.txt"], "^error: data folder {root}/one_word.txt is a file, not a folder: pass "
                                             "--data_path=DIR with DIR holding ptb.train.txt, ptb.valid.txt and "
                                             "ptb.test.txt$", 2),
    (T, ["--model=small", "--train_words=300"], r"^error: 300 words of {corpus}/ptb.train.txt \(--train_words=300\) "
                                                "are too few for batch_size=20 x num_steps=20: use a longer text or a "
                                                "smaller batch_size or num_steps$", 2),
    (T, ["--data_path={shortvalid}"], "^error: 14 words of {shortvalid}/ptb.valid.txt are too few for batch_size=20 "
                                      "x num_steps=2: use a longer text or a smaller batch_size or num_steps$", 2),
    (T, ["--embedding_file={folder}"], "^error: --embedding_file=.*folder is not a regular file", 2),
    (T, ["--embedding_file={root}/none.txt"], "^error: --embedding_file=.*none.txt not found", 2),
    (T, ["--embedding_file={fifo}"], "^error: --embedding_file=.*fifo is not a regular file", 2),
    (T, ["--save_path={ckpt}", "--embedding_file={root}/glove_nan.txt"], "^error: .*glove_nan.txt, line 1: not a "
                                                                         "word followed by 2 finite", 2),  # resumed
    (T, ["--embedding_file={root}/glove_nan.txt"], "^error: .*glove_nan.txt, line 1: not a word followed by 2 finite",
     2),
    (T, ["--save_path={root}/file/run"], "^error: --save_path=.*file/run is under .*file, a file, not a folder: "
                                         "choose a folder path$", 2),
    (T, ["--save_path={root}/new/run", "--data_path=/nonexistent"], "^error: data folder /nonexistent does not", 2),
    (T, ["--save_path={root}/notes"], r"^error: --save_path=.*notes holds files a training run did not write "
                                      r"\(notes.txt\)", 2),
    (T, ["--save_path={root}/folder"], r"^error: --save_path=.*folder holds files a training run did not write", 2),
    (T, ["--save_path={root}/userconfig"], NOT_OURS.format("userconfig", "config.json"), 2),
    (T, ["--save_path={root}/uservocab"], NOT_OURS.format("uservocab", "vocab.txt"), 2),
    (T, ["--save_path={root}/usermetrics"], NOT_OURS.format("usermetrics", "metrics.jsonl"), 2),
    (T, ["--save_path={root}/userplot"], NOT_OURS.format("userplot", "perplexity.png"), 2),
    (T, ["--save_path={root}/usernote"], NOT_OURS.format("usernote", "checkpoint"), 2),
    (T, ["--save_path={root}/userrun"], "^error: {root}/userrun/run.json is not one a training run wrote: give an "
                                        "empty or a new --save_path$", 2),
    (T, ["--save_path={badmarker}"], "^error: {badmarker}/run.json is damaged, or not one a training run wrote, beside "
                                     "a run's weights: remove run.json to resume that run \\(the same command adopts "
                                     "the folder\\), or give another --save_path$", 2),
    (T, ["--save_path={badmetrics}"], "^error: {badmetrics}/metrics.jsonl is damaged, or not one this program wrote "
                                      r"\(.*\): repair it, or remove it to resume \(its epochs' records are lost, the "
                                      r"weights kept\)$", 2),
    (T, ["--save_path={ckpt}", "--train_words=1000"], "^error: {ckpt} holds a run whose epoch is 1680 training words, "
                                                      "the command's is 1000: resume with that run's --train_words "
                                                      "and --data_path, or give another --save_path$", 2),
    (T, ["--save_path={legacy}", "--keep_prob=0.5"], "^error: {legacy} holds a run with keep_prob=1.0, the command "
                                                     "asks for 0.5: rerun that run's command, or give another "
                                                     "--save_path$", 2),
    (T, ["--save_path={nonfinite}"], NOT_FINITE, 2),
    (T, ["--save_path={ckpt}", "--model=small_tied"], "^error: .*ckpt holds a run with max_grad_norm=1, the command "
                                                      "asks for 5", 2),
    (T, ["--save_path={ckpt}", "--embedding_size=3"], "^error: .*ckpt holds a run with embedding_size=None, the "
                                                      "command asks for 3", 2),
    (T, ["--save_path={ckpt}", "--keep_prob=0.5"], "^error: .*ckpt holds a run with keep_prob=1.0", 2),
    (T, ["--save_path={ckpt}", "--data_path={other}"], "^error: .*ckpt holds a run trained on another vocabulary", 2),
    (T, ["--save_path={ckpt}", "--max_vocab=5"], "^error: .*ckpt holds a run with vocab_size=9, the command asks "
                                                 "for 5", 2),
    (T, ["--save_path={noindex}"], "^error: .*noindex holds weights .* but no 'checkpoint' file naming them", 2),
    (T, ["--save_path={truncated}"], "^error: cannot read the weights .*truncated/model.ckpt-.*: the file is damaged",
     2),
    (T, ["--save_path={badcell}"], r"^error: .*badcell/config.json is not a config this program wrote \(cell='tree'",
     2),
    (L, [], "^error: give one command, one of generate", 2),
    (L, ["bogus", "--save_path={ckpt}"], "^error: give one command", 2),
    (L, ["generate"], "^error: --save_path=DIR is needed", 2),
    (L, ["generate", "--save_path={ckpt}", "--temperature=0"], FLAG.format(r"temperature=0.0") + "above 0", 2),
    (L, ["generate", "--save_path={ckpt}", "--temperature=-1"], FLAG.format(r"temperature=-1.0"), 2),
    (L, ["generate", "--save_path={ckpt}", "--temperature=nan"], FLAG.format(r"temperature=nan"), 2),
    (L, ["generate", "--save_path={ckpt}", "--seed=-1"], FLAG.format("seed=-1"), 2),
    (L, ["generate", "--save_path={ckpt}", "--num_words=0"], FLAG.format("num_words=0"), 2),
    (L, ["generate", "--save_path={ckpt}", "--num_words=10000000"], FLAG.format("num_words=10000000") + "from 1 to "
                                                                    r"100000 \(printed as they are drawn\)", 2),
    (L, ["nearest", "--save_path={ckpt}", "--word=cat", "--top_k=100000"], r"^error: --top_k=100000: give a number "
                                                                          "from 1 to the number of other words in "
                                                                          r"the vocabulary, \d+$", 2),
    (L, ["predict", "--save_path={ckpt}", "--top_k=0", "--context=the"], FLAG.format("top_k=0"), 2),
    (L, ["generate", "--save_path={ckpt}", "--top_k=100000"], r"^error: --top_k=100000: give a number from 1 to the "
                                                              r"vocabulary size, 9", 2),
    (L, ["score", "--save_path={ckpt}"], "^error: --input=- holds no text", 2),
    (L, ["eval", "--save_path={ckpt}"], "^error: eval needs --input=FILE", 2),
    (L, ["eval", "--save_path={ckpt}", "--input={root}/none.txt"], "^error: --input=.*none.txt not found", 2),
    (L, ["eval", "--save_path={ckpt}", "--input={folder}"], "^error: --input=.*folder is not a regular file", 2),
    (L, ["eval", "--save_path={ckpt}", "--input={fifo}"], "^error: --input=.*fifo is not a regular file", 2),
    (L, ["eval", "--save_path={ckpt}", "--input={root}/one_word.txt"], "^error: --input=.*one_word.txt holds one "
                                                                       "word: a perplexity needs two or more", 2),
    (L, ["eval", "--save_path={ckpt}", "--input={root}/latin1.txt"], "^error: .*latin1.txt is not UTF-8 text", 2),
    (L, ["score", "--save_path={ckpt}", "--input={root}/latin1.txt"], r"^error: --input=.*latin1.txt is not UTF-8 "
                                                                      r"text \(byte 3\)", 2),
    (L, ["export", "--save_path={ckpt}"], "^error: export needs --export_dir=FOLDER", 2),
    (L, ["export", "--save_path={ckpt}", "--export_dir={root}/file"], "^error: --export_dir=.*file exists already", 2),
    (L, ["export", "--save_path={ckpt}", "--export_dir={root}/file/model"], "^error: --export_dir=.*file/model is "
                                                                            "under .*file, a file, not a folder", 2),
    (L, ["projector", "--save_path={ckpt}", "--export_dir={root}/file/p/q"], "^error: --export_dir=.*file/p/q is "
                                                                            "under .*file, a file, not a folder", 2),
    (L, ["projector", "--save_path={ckpt}"], "^error: projector needs --export_dir=FOLDER", 2),
    (L, ["nearest", "--save_path={ckpt}"], "^error: nearest needs --word=WORD", 2),
    (L, ["nearest", "--save_path={ckpt}", "--word=zebra"], "^error: 'zebra' is not in the vocabulary", 2),
    (L, ["generate", "--save_path={root}/none"], "^error: no checkpoint folder .*none", 2),
    (L, ["generate", "--save_path={noindex}"], "^error: .*noindex holds weights .* but no 'checkpoint' file", 2),
    (L, ["generate", "--save_path={junkindex}"], r"^error: .*junkindex holds weights \(model.ckpt-\d+\) but a "
                                                 r"'checkpoint' file that is damaged \(not the index a training "
                                                 r"writes\): restore that file", 2),
    (L, ["generate", "--save_path={staleindex}"], r"^error: .*staleindex holds weights \(model.ckpt-\d+\) but a "
                                                  "'checkpoint' file that names model.ckpt-999, which is not there: "
                                                  "restore that file", 2),
    (L, ["eval", "--save_path={truncated}", "--input={corpus}/ptb.test.txt"], "^error: cannot read the weights .*: "
                                                                              "the file is damaged", 2),
    (L, ["generate", "--save_path={badcell}"], r"^error: .*config.json is not a config .* \(cell='tree': give one of "
                                               r"lstm, gru, rnn\)", 2),
    (L, ["generate", "--save_path={badsize}"], r"^error: .*config.json is not a config .*hidden_size=2.5: give an "
                                               "integer", 2),
    (L, ["generate", "--save_path={badjson}"], r"^error: .*config.json is not a config this program wrote", 2),
    (L, ["generate", "--save_path={noeos}"], "^error: the vocabulary has no <eos>", 2),
    (L, ["generate", "--save_path={tied}"], r"^error: the weights .*tied/model.ckpt-\d+ hold Model/softmax_w, which "
                                            r"the config.json beside them has no place for \(tie_embeddings\?\)", 2),
    (L, ["generate", "--save_path={dupvocab}"], r"^error: .*dupvocab/vocab.txt holds the word 'cat' twice \(lines "
                                                r"\d+ and \d+\): keep the files of one training run together$", 2),
    (L, [*EVAL, "--cache_size=0"], FLAG.format("cache_size=0") + r"of at least 1 \(the positions the cache holds\)", 2),
    (L, [*EVAL, "--cache_theta=-0.5"], FLAG.format(r"cache_theta=-0.5") + r"from 0 to 1000 \(tune", 2),
    (L, [*EVAL, "--cache_lambda=1.5"], FLAG.format(r"cache_lambda=1.5") + r"from 0 up to \(not including\) 1", 2),
    (L, [*EVAL, "--cache_lambda=-0.1"], FLAG.format(r"cache_lambda=-0.1"), 2),
    (L, [*EVAL, "--dynamic_lr=-0.01"], FLAG.format(r"dynamic_lr=-0.01") + "from 0 to 3.4e38", 2),
    (L, [*EVAL, "--dynamic_lr=nan"], FLAG.format(r"dynamic_lr=nan"), 2),
    (L, [*EVAL, "--dynamic_decay=-0.1"], FLAG.format(r"dynamic_decay=-0.1") + "from 0 to 1", 2),
    (L, [*EVAL, "--dynamic_decay=1.5"], FLAG.format(r"dynamic_decay=1.5"), 2),
    (L, [*EVAL, "--dynamic_window=0"], FLAG.format("dynamic_window=0") + "of at least 1", 2),
    (L, [*EVAL, "--cache_theta=1e308"], FLAG.format(r"cache_theta=1e\+308") + "from 0 to 1000", 2),
    (L, [*EVAL, "--cache_lambda=1"], FLAG.format(r"cache_lambda=1.0") + r"from 0 up to \(not including\) 1", 2),
    (L, [*EVAL, "--dynamic_lr=1e30", "--dynamic_window=5"], r"^Stopped: dynamic evaluation diverged \(perplexity inf "
                                                          r"with --dynamic_lr=1e\+30 --dynamic_decay=0 "
                                                          r"--dynamic_window=5\): give a smaller --dynamic_lr$", 3),
    (L, ["predict", "--save_path={ckpt}", "--context=the", "--cache_size=5"],
     r"^error: --cache_size is not used by predict \(only by eval\): leave it out$", 2),
    (L, ["generate", "--save_path={ckpt}", "--dynamic_eps=0.1"], r"^error: --dynamic_eps is not used by generate "
                                                                 r"\(only by eval, tune\): leave it out$", 2),
    (L, ["score", "--save_path={ckpt}", "--word=cat"], r"^error: --word is not used by score \(only by nearest\)", 2),
    (L, [*EVAL, "the"], "^error: unexpected argument 'the': flags are written --name=value; python lm.py --help "
                        "lists them$", 2),
    (T, ["--model=small", "small"], "^error: unexpected argument 'small': flags are written --name=value; python "
                                    "ptb_word_lm.py --help lists them$", 2),
    (L, ["tune", "--save_path={ckpt}", "--valid={root}/two_words.txt", "--input={corpus}/ptb.test.txt"],
     r"^error: --valid=.*two_words.txt holds 1 word to predict, fewer than tune's longest window \(35\): give a "
     "longer text", 2),
    (L, [*EVAL, "--cache_size=10"], "^error: the cache needs --cache_size, --cache_theta and --cache_lambda", 2),
    (L, [*EVAL, "--dynamic_decay=0.1"], "^error: dynamic evaluation needs --dynamic_lr and --dynamic_window", 2),
    (L, [*EVAL, "--adapt=tuned", "--dynamic_lr=0.1"], "^error: --adapt=tuned takes the values lm.py tune chose: "
                                                      "leave out --dynamic_lr", 2),
    (L, [*EVAL, "--adapt=best"], "^error: flag --adapt=best: value should be one of", 2),
    (L, [*EVAL, "--adapt=tuned"], "^error: .*ckpt holds no adapt.json: choose the values first with python lm.py tune",
     2),
    (L, ["tune", "--save_path={ckpt}", "--input={corpus}/ptb.test.txt"], "^error: tune needs --valid=FILE", 2),
    (L, ["tune", "--save_path={ckpt}", "--valid={corpus}/ptb.valid.txt"], "^error: tune needs --input=FILE", 2),
    (L, ["tune", "--save_path={ckpt}", "--valid={root}/none.txt", "--input={corpus}/ptb.test.txt"],
     "^error: --valid=.*none.txt not found", 2),
    (L, ["tune", "--save_path={ckpt}", "--valid={root}/one_word.txt", "--input={corpus}/ptb.test.txt"],
     "^error: --valid=.*one_word.txt holds one word", 2),
    (L, ["generate", "--save_path={nonfinite}"], NOT_FINITE, 2),
    (L, ["predict", "--save_path={nonfinite}", "--context=the"], NOT_FINITE, 2),
    (L, ["score", "--save_path={nonfinite}"], NOT_FINITE, 2),
    (L, ["eval", "--save_path={nonfinite}", "--input={corpus}/ptb.test.txt"], NOT_FINITE, 2),
    (L, ["export", "--save_path={nonfinite}", "--export_dir={root}/exported"], NOT_FINITE, 2),
    (L, ["nearest", "--save_path={nonfinite}", "--word=cat"], NOT_FINITE, 2),
    (L, ["projector", "--save_path={nonfinite}", "--export_dir={root}/projected"], NOT_FINITE, 2),
    (B, ["--steps=0"], FLAG.format("steps=0") + "of at least 1" + HELP, 2),
    (B, ["--adapt_words=50"], FLAG.format("adapt_words=50") + r"of 0 \(none\) or at least 100 \(lm.py eval's window\)"
     + HELP, 2),
    (B, ["--num_threads=-1"], FLAG.format("num_threads=-1") + r"from 0 \(one per core\) to 1024" + HELP, 2),
    (B, ["--precisions=fp32,fp8"], r"^error: flag --precisions=\['fp32', 'fp8'\]: fp8 is not one of fp32, bf16, fp16: "
                                   "give one or more of them, separated by commas" + HELP, 2),
    (B, ["--modes=block,bogus"], r"^error: flag --modes=\['block', 'bogus'\]: bogus is not one of basic, block, fast, "
                                 "fast_loop, fast_split: give one or more of them, separated by commas"
                                 + HELP, 2),
    (B, ["--modes=cudnn"], r"^error: flag --modes=\['cudnn'\]: cudnn is not one of basic, block, fast, fast_loop", 2),
    (B, ["--model=huge"], "^error: flag --model=huge: value should be one of", 2),
]


# The cases also run as processes of their own (`python PROGRAM ARGS`), for what only a process shows: the exit status,
# nothing on stderr but the one line (TensorFlow's C++ logging included), no traceback. One or two of each kind:
# refused while parsing (before TensorFlow's import), a corpus, a run folder, a checkpoint, an lm.py command, a
# divergence, benchmark.py.
PROCESS_LEVEL = [
    (T, ("--keep_prob=0",)),
    (T, ("--model=small", "small")),
    (T, ("--data_path=/nonexistent/ptb",)),
    (T, ("--embedding_file={root}/glove_nan.txt",)),
    (T, ("--save_path={badmarker}",)),
    (T, ("--save_path={nonfinite}",)),
    (L, ("generate", "--save_path={nonfinite}")),
    (L, ("predict", "--save_path={ckpt}", "--context=the", "--cache_size=5")),
    (L, ("tune", "--save_path={ckpt}", "--valid={root}/two_words.txt", "--input={corpus}/ptb.test.txt")),
    (L, (*EVAL, "--dynamic_lr=1e30", "--dynamic_window=5")),
    (B, ("--steps=0",)),
    (B, ("--modes=cudnn",)),
]


def check_case(env, program, args, message, code, run_case):
    """Runs a case with run_case(program, args) and checks its outcome: the exit code, one line on stderr that
    matches `message`, no traceback, and every file under env's root as it was."""
    args = [a.format(**env) for a in args]
    message = message.format(**{k: re.escape(v) for k, v in env.items()})
    if program == T and not any(a.startswith("--data_path") for a in args):
        args.insert(0, f"--data_path={env['corpus']}")
    if program == T and not any(a.startswith("--model") for a in args):
        args.insert(0, "--model=test")
    before = snapshot(env["root"])
    result = run_case(program, args)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(env["root"]) == before  # nothing written, nothing changed, no folder left behind


@pytest.mark.parametrize("program, args, message, code", CASES, ids=[f"{c[0][:2]}-{' '.join(c[1])[:60]}"
                                                                     for c in CASES])
def test_bad_input(env, program, args, message, code):
    check_case(env, program, args, message, code, lambda program, args: in_process.run(program, *args))


PROCESS_CASES = [c for c in CASES if (c[0], tuple(c[1])) in PROCESS_LEVEL]


@pytest.mark.parametrize("program, args, message, code", PROCESS_CASES,
                         ids=[f"{c[0][:2]}-{' '.join(c[1])[:60]}" for c in PROCESS_CASES])
def test_bad_input_as_a_process(env, program, args, message, code):
    check_case(env, program, args, message, code, lambda program, args: run(program, args, stdin=""))


def test_the_process_level_cases_are_cases():
    assert len(PROCESS_CASES) == len(PROCESS_LEVEL)


def test_a_folder_another_training_holds_is_refused_untouched(env):
    """A training holds its folder's lock (here this test does) for its life: a second one is refused at its start."""
    fd = os.open(env["ckpt"], os.O_RDONLY | os.O_DIRECTORY)  # the folder itself, as a training locks it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        before = snapshot(env["root"])
        result = in_process.run(T, "--model=test", f"--data_path={env['corpus']}", f"--save_path={env['ckpt']}")
    finally:
        os.close(fd)
    assert (result.returncode, result.stderr) == (2, f"error: --save_path={env['ckpt']} is in use by another training "
                                                     "run: wait for it to end, or give another --save_path\n")
    assert snapshot(env["root"]) == before


def test_latin1_on_standard_input_is_refused_as_the_same_file_is(env):
    for command in ("score", "predict"):
        result = subprocess.run([sys.executable, os.path.join(ROOT, L), command, f"--save_path={env['ckpt']}"],
                                input="caf\xe9 the cat\n".encode("latin-1"), capture_output=True, timeout=300, cwd=ROOT)
        assert (result.returncode, result.stdout, result.stderr.decode()) == (
            2, b"", "error: standard input is not UTF-8 text (byte 3): give UTF-8 text, one sentence per line\n")


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({(c[0], tuple(c[1])) for c in CASES}) == len(CASES)
