"""A run folder shared with other processes: two trainings started together, a reader beside a writer, a folder
written before run.json existed, the last three checkpoints across resumes. The test config on a small corpus."""
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import configs
import in_process
from tools import checkpoint, kernels, runfolder
from conftest import ROOT, write_corpus
from test_cli import run as run_trainer, run_process

SENTENCES = "".join(f" the {a} sat on the {b}\n" for a in ("cat", "dog", "rat") for b in ("mat", "rug")) * 40
FLAGS = ["--model=test", "--seed=3"]  # 1680 words: 41 windows per epoch
OLD = "909d01c"  # the last commit before run.json and the lock; runs/large was started with it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), SENTENCES)


@pytest.fixture(scope="module")
def alone(corpus, tmp_path_factory):
    """(stdout, folder) of two epochs trained alone, never stopped. In a process of its own, like the trainings it is
    compared to byte for byte: the graph in a .meta file names its custom gradient by a count of those the process made
    before (tf.custom_gradient's "CustomGradient-N")."""
    save_path = tmp_path_factory.mktemp("alone")
    result = run_process(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=2", f"--save_path={save_path}")
    assert result.returncode == 0, result.stderr
    return result.stdout, save_path


def start(*args, **kwargs):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "ptb_word_lm.py"), *args], text=True, cwd=ROOT,
                            **kwargs)


def snapshot(folder):
    """{name: md5} of the folder's files but the TensorBoard events, whose names and contents hold the time."""
    return {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in os.listdir(folder)
            if not f.startswith("events.")}


def perplexities(stdout):
    return re.findall(r"(?:Train|Valid|Test) Perplexity: [\d.]+", stdout)


def checkpoints(folder):
    return sorted(int(f[len("model.ckpt-"):-len(".index")]) for f in os.listdir(folder) if f.endswith(".index"))


def test_two_trainings_started_together_on_one_folder(corpus, alone, tmp_path):
    """Exactly one trains; the other is refused at its start and touches nothing: the folder is the one's alone."""
    args = [f"--data_path={corpus}", *FLAGS, "--max_max_epoch=2", f"--save_path={tmp_path}/run"]
    outs = [tmp_path / "out0", tmp_path / "out1"]
    processes = [start(*args, stdout=open(out, "w"), stderr=subprocess.PIPE) for out in outs]
    # The first to print its "Model:" line owns the folder. It is paused until the other has ended, so that the
    # other meets it running (and cannot start only after it finished, and resume its finished run).
    while not any("Model:" in out.read_text() for out in outs) and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    winner = next((i for i in (0, 1) if "Model:" in outs[i].read_text()), None)
    if winner is None:  # one was refused before the other printed its line
        winner = next((i for i in (0, 1) if processes[i].poll() is None), None)
        assert winner is not None, [p.communicate()[1] for p in processes]  # both ended: say why
    loser = processes[1 - winner]
    processes[winner].send_signal(signal.SIGSTOP)
    try:
        _, stderr = loser.communicate(timeout=300)
    finally:
        processes[winner].send_signal(signal.SIGCONT)
    assert (loser.returncode, stderr) == (2, f"error: --save_path={tmp_path}/run is in use by another training run: "
                                             "wait for it to end, or give another --save_path\n")
    assert outs[1 - winner].read_text() == ""
    _, stderr = processes[winner].communicate(timeout=300)
    assert processes[winner].returncode == 0, stderr
    assert perplexities(outs[winner].read_text()) == perplexities(alone[0])
    assert snapshot(tmp_path / "run") == snapshot(alone[1])  # weights, index, metrics, plot, run.json: byte for byte


def test_a_training_refused_leaves_the_folder_to_the_one_that_took_it(tmp_path, monkeypatch):
    """Two trainings found --save_path missing and both created it: the one refused, as it ends, removes neither the
    folder nor the other's claim on it (the race the test above lost now and then). Its own claim it removes."""
    folder, config = tmp_path / "run", configs.get_config("test")
    claim = lambda: runfolder.claim(str(folder), config, ["a", "b"], 100, "test")  # noqa: E731
    marker = '{"written_by": "ptb_word_lm.py", "model": "test", "train_words": 100}'
    folder.mkdir()
    other = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # another open directory: another holder, for flock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (folder / "run.json").write_text(marker)
    with pytest.raises(checkpoint.CheckpointError, match="is in use by another training run"):
        claim()
    runfolder.remove_unused([str(folder)])
    assert os.listdir(folder) == ["run.json"]
    # The other ends having saved nothing and removes the folder just after this one opened it (and a third
    # training may have made it again): the folder this one locks is no longer the one at that path: refused.
    os.close(other)
    opened = os.open
    for third in (False, True):
        def open_then_removed(path, *args, **kwargs):
            fd = opened(path, *args, **kwargs)
            os.remove(os.path.join(path, "run.json"))
            os.rmdir(path)
            if third:
                os.mkdir(path)
            return fd
        folder.mkdir(exist_ok=True)
        (folder / "run.json").write_text(marker)
        monkeypatch.setattr(os, "open", open_then_removed)
        with pytest.raises(checkpoint.CheckpointError, match="is in use by another training run"):
            claim()
        monkeypatch.undo()
    assert claim() is None  # now it is free: made again, by a run that saved nothing yet
    runfolder.remove_unused([str(folder)])
    assert os.listdir(tmp_path) == []


def test_removing_files_from_the_folder_of_a_running_training_lets_no_second_one_in(corpus, tmp_path):
    """The lock is on the folder itself: someone tidying it (here: the plot, the TensorBoard files and the lock file
    that versions before used) does not let a second training in, with the same flags or others."""
    save_path = tmp_path / "run"
    writer = start(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1000", f"--save_path={save_path}",
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in writer.stdout:
            if line.startswith("Epoch: 2 "):  # its first checkpoint is saved
                break
        (save_path / ".lock").touch()  # as versions before left it; removed with the rest
        for name in os.listdir(save_path):
            if name in (".lock", "perplexity.png") or name.startswith("events."):
                os.remove(save_path / name)
        assert writer.poll() is None
        for flags in (FLAGS, [*FLAGS[:-1], "--seed=4", "--learning_rate=0.5"]):
            second = run_trainer(f"--data_path={corpus}", *flags, f"--save_path={save_path}")
            assert (second.returncode, second.stderr) == (2, f"error: --save_path={save_path} is in use by another "
                                                             "training run: wait for it to end, or give another "
                                                             "--save_path\n")
    finally:
        writer.kill()
        writer.communicate()


def test_a_reader_beside_a_writer_never_sees_damage(corpus, tmp_path):
    """lm.py on a folder whose training saves every window: the Saver removes checkpoints as lm.py reads them."""
    writer = start(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1000", "--checkpoint_minutes=0.0001",
                   f"--save_path={tmp_path}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (tmp_path / "checkpoint").exists():
            assert writer.poll() is None
            time.sleep(0.1)
        first = checkpoints(tmp_path)[-1]
        for reads in range(1, 201):
            assert writer.poll() is None
            read = in_process.run("lm.py", "predict", f"--save_path={tmp_path}", "--context=the cat", "--top_k=2")
            assert (read.returncode, read.stderr) == (0, "")
            assert re.fullmatch(r"the cat -> \S+ [\d.]+, \S+ [\d.]+\n", read.stdout)
            if reads >= 3 and checkpoints(tmp_path)[-1] >= first + 10:  # three reads at least, ten saves beside them
                break
        else:
            pytest.fail(f"the training saved {checkpoints(tmp_path)[-1] - first} times in 200 reads")
    finally:
        writer.kill()
        writer.communicate()


def test_read_latest_reads_the_newer_checkpoint_when_the_named_one_is_rotated_away(corpus, tmp_path):
    """As when a training saves while lm.py reads: the checkpoint named is gone by the time it is read."""
    result = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=2", f"--save_path={tmp_path}")
    assert result.returncode == 0, result.stderr
    first, last = checkpoints(tmp_path)
    index = (tmp_path / "checkpoint").read_text()
    (tmp_path / "checkpoint").write_text(index.replace(f'model_checkpoint_path: "model.ckpt-{last}"',
                                                       f'model_checkpoint_path: "model.ckpt-{first}"'))
    read = []

    def rotating(prefix):
        read.append(os.path.basename(prefix))
        if len(read) == 1:  # a save names the newer one, then removes the older
            (tmp_path / "checkpoint").write_text(index)
            for f in tmp_path.glob(f"model.ckpt-{first}.*"):
                f.unlink()
        checkpoint.check_finite(prefix)
        return "read"

    assert checkpoint.read_latest(str(tmp_path), rotating) == "read"
    assert read == [f"model.ckpt-{first}", f"model.ckpt-{last}"]
    with open(next(tmp_path.glob(f"model.ckpt-{last}.data-*")), "r+b") as f:
        f.truncate(100)
    with pytest.raises(checkpoint.CheckpointError, match=rf"^cannot read the weights {tmp_path}/model.ckpt-{last} "
                                                         r"\(Read less bytes than requested\): the file is damaged; "
                                                         "restore it, or give another --save_path$"):
        checkpoint.read_latest(str(tmp_path), checkpoint.check_finite)


def test_the_last_three_checkpoints_are_kept_across_resumes(corpus, tmp_path):
    args = [f"--data_path={corpus}", *FLAGS, "--checkpoint_minutes=0.0001", f"--save_path={tmp_path}"]
    first = run_trainer(*args, "--max_max_epoch=1")
    assert first.returncode == 0, first.stderr
    assert checkpoints(tmp_path)[-1] == 41 and len(checkpoints(tmp_path)) == 3
    for step in (1, 2, 5):  # older checkpoints no index names, as runs before this version left behind
        for f in tmp_path.glob("model.ckpt-41.*"):
            shutil.copy(f, tmp_path / f.name.replace("-41.", f"-{step}."))
    for epochs in (2, 3, 4):
        resumed = run_trainer(*args, f"--max_max_epoch={epochs}")
        assert resumed.returncode == 0, resumed.stderr
        assert f"Resuming from {tmp_path}/model.ckpt-{41 * (epochs - 1)}: epoch {epochs}, step 0" in resumed.stdout
        kept = checkpoints(tmp_path)
        assert len(kept) == 3 and kept[-1] == 41 * epochs, kept
        assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint", "config.json", "metrics.jsonl",
                                                      "perplexity.png", "run.json", "vocab.txt"] +
                                                     [f"model.ckpt-{s}.{e}" for s in kept
                                                      for e in ("data-00000-of-00001", "index", "meta")] +
                                                     [f for f in os.listdir(tmp_path) if f.startswith("events.")])
        index = (tmp_path / "checkpoint").read_text()
        assert re.findall(r'all_model_checkpoint_paths: "model.ckpt-(\d+)"', index) == [str(s) for s in kept]


def test_a_folder_written_before_run_json_is_adopted_and_continues_exactly(corpus, alone, tmp_path):
    """A folder of the code before run.json and the lock (like runs/large): resumed, it goes on as if never stopped."""
    old = tmp_path / "old"
    archive = subprocess.run(["git", "-C", ROOT, "archive", OLD], capture_output=True)
    if archive.returncode:
        pytest.skip(f"commit {OLD} is not in this repository's history")
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    before = subprocess.run([sys.executable, "ptb_word_lm.py", f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1",
                             f"--save_path={tmp_path}/run"], capture_output=True, text=True, cwd=old, timeout=300)
    assert before.returncode == 0, before.stderr
    assert not (tmp_path / "run" / "run.json").exists()
    resumed = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=2", f"--save_path={tmp_path}/run")
    assert resumed.returncode == 0, resumed.stderr
    assert "precision: fp32 (the run's own), " in resumed.stdout
    assert f"Resuming from {tmp_path}/run/model.ckpt-41: epoch 2, step 0" in resumed.stdout
    assert perplexities(resumed.stdout) == perplexities(alone[0])[-3:]
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"written_by": "ptb_word_lm.py",
                                                                      "model": "test", "train_words": 1680,
                                                                      "precision": "fp32"}


def test_a_run_that_diverges_before_its_first_checkpoint_says_nothing_was_saved(corpus, tmp_path):
    result = run_trainer(f"--data_path={corpus}", *FLAGS, "--learning_rate=1e30", f"--save_path={tmp_path}/run")
    assert result.returncode == 3, result.stderr
    assert re.fullmatch(r"Stopped: the loss became \S+ \(gradient norm \S+\) at epoch 1, step \d+: training stopped, "
                        r"nothing was saved \(it diverged before its first checkpoint\); lower --learning_rate\n",
                        result.stderr), result.stderr
    assert not (tmp_path / "run").exists()  # it made the folder and saved nothing: the folder is gone too


def test_temporary_files_are_named_for_their_write(tmp_path):
    """Two processes writing one file never share a temporary name; a failed write leaves the file as it was."""
    (tmp_path / "config.json.tmp").write_text("another writer's\n")
    checkpoint.write_atomically(str(tmp_path / "config.json"), "new\n")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "config.json.tmp"]
    assert (tmp_path / "config.json.tmp").read_text() == "another writer's\n"
    with pytest.raises(OSError) as failed:
        with checkpoint.replacing(str(tmp_path / "config.json")) as tmp:
            assert re.fullmatch(rf"{tmp_path}/config\.json\.tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp)
            with open(tmp, "w") as f:
                f.write("half")
            raise OSError(28, "No space left on device")  # as a write to a full disk
    assert failed.value.filename == str(tmp_path / "config.json")  # the file the user knows, not the temporary one
    assert sorted(os.listdir(tmp_path)) == ["config.json", "config.json.tmp"]
    assert (tmp_path / "config.json").read_text() == "new\n"


def test_a_resume_keeps_its_seed_and_refuses_another(corpus, alone, tmp_path):
    """The seed is saved with the weights: a resume without --seed goes on with it, and says so; with another
    --seed it is refused before anything is written, since the saved seed would silently win."""
    save_path = tmp_path / "run"
    shutil.copytree(alone[1], save_path)
    before = snapshot(save_path)
    refused = run_trainer(f"--data_path={corpus}", "--model=test", "--seed=4", "--max_max_epoch=3",
                          f"--save_path={save_path}")
    assert (refused.returncode, refused.stderr) == (2, f"error: {save_path} holds a run with --seed=3, the command "
                                                       "asks for --seed=4: resume with --seed=3 (or without --seed), "
                                                       "or give another --save_path\n")
    assert snapshot(save_path) == before
    resumed = run_trainer(f"--data_path={corpus}", "--model=test", "--max_max_epoch=3", f"--save_path={save_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert "seed: 3," in resumed.stdout


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (("fpu sse avx2 avx512f avx512bw", "fp32"), ("avx2 avx512f avx512_bf16", "bf16"),
                            ("avx2 amx_tile amx_bf16", "bf16"), ("", "fp32")):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert kernels.resolve_precision("auto", kernels.cpu_flags(str(cpuinfo))) == expected, flags
    assert kernels.cpu_flags(str(tmp_path / "missing")) == set()  # not Linux: fp32
    for given in ("fp32", "bf16", "fp16"):
        assert kernels.resolve_precision(given, {"avx512_bf16"}) == kernels.resolve_precision(given, set()) == given


def test_a_resumed_run_keeps_its_precision(corpus, tmp_path):
    """The precision is recorded in run.json; a resume takes it (auto, or no flag), and refuses another. A fresh run
    without the flag trains in fp32, the default; with auto, in this CPU's choice, printed and recorded."""
    save_path = tmp_path / "run"
    first = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1", "--precision=bf16",
                        f"--save_path={save_path}")
    assert first.returncode == 0, first.stderr
    assert json.loads((save_path / "run.json").read_text())["precision"] == "bf16"
    for flags in ([], ["--precision=auto"]):
        resumed = run_trainer(f"--data_path={corpus}", *FLAGS, f"--max_max_epoch={2 + len(flags)}", *flags,
                              f"--save_path={save_path}")
        assert resumed.returncode == 0, resumed.stderr
        assert re.search(r"^Model: test, rnn_mode: fast, precision: bf16 \(the run's own\), ", resumed.stdout, re.M), \
            resumed.stdout
        assert "Resuming from" in resumed.stdout
    other = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=4", "--precision=fp32",
                        f"--save_path={save_path}")
    assert (other.returncode, other.stderr) == (2, f"error: {save_path} holds a run trained in bf16: resume it with "
                                                   "--precision=bf16 (or without the flag), or give another "
                                                   "--save_path\n")
    default = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1", f"--save_path={tmp_path}/default")
    assert default.returncode == 0, default.stderr
    assert re.search(r"^Model: test, rnn_mode: fast, precision: fp32, ", default.stdout, re.M), default.stdout
    assert json.loads((tmp_path / "default" / "run.json").read_text())["precision"] == "fp32"
    fresh = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=1", "--precision=auto",
                        f"--save_path={tmp_path}/auto")
    assert fresh.returncode == 0, fresh.stderr
    chosen = kernels.resolve_precision("auto")
    assert f"precision: {chosen} (auto)," in fresh.stdout
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["precision"] == chosen


def test_a_projector_export_inside_the_folder_does_not_block_its_resume(corpus, alone, tmp_path):
    """docs/lm.md exports the projector to DIR/projector: the training resumes beside it, which it never touches."""
    shutil.copytree(alone[1], tmp_path / "run")
    exported = in_process.run("lm.py", "projector", f"--save_path={tmp_path}/run",
                              f"--export_dir={tmp_path}/run/projector")
    assert exported.returncode == 0, exported.stderr
    assert sorted(os.listdir(tmp_path / "run" / "projector")) == ["metadata.tsv", "vectors.tsv"]
    before = snapshot(tmp_path / "run" / "projector")
    resumed = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=3", f"--save_path={tmp_path}/run")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {tmp_path}/run/model.ckpt-82: epoch 3, step 0" in resumed.stdout
    assert snapshot(tmp_path / "run" / "projector") == before
    (tmp_path / "run" / "projector" / "notes.txt").write_text("mine\n")  # then it is the user's folder: refused
    refused = run_trainer(f"--data_path={corpus}", *FLAGS, "--max_max_epoch=4", f"--save_path={tmp_path}/run")
    assert refused.returncode == 2 and "holds files a training run did not write (projector)" in refused.stderr
