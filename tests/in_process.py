"""Runs the programs' command lines one after another inside one long-lived Python process, as `python PROGRAM ARGS`
runs them: TensorFlow is imported once, not once per command line (seconds each), which is what made the bad-input
cases most of the suite's time.

The process executes the program's file as __main__ for each command line (runpy), so the same code runs as from a
shell: its flags parsed and checked by cli.parse_first, main run by cli.run, one-line errors and exit codes through
cli.fail. What it cannot show is the process itself (the exit status the shell sees, the C++ lines on fd 2, signals):
tests/test_bad_input.py keeps a dozen cases as real subprocesses for that, and the tests that send signals or
start several replicas (whose logical devices must be set up before TensorFlow's runtime starts) start processes.
What the first command line fixes for the process stays: TensorFlow's thread pools (so --num_threads is not for
here), and the modules imported (ptb_word_lm.py's, lm.py's and benchmark.py's files run anew each time, the
project's modules and TensorFlow's do not).
"""
import atexit
import json
import signal
import subprocess
import sys
import tempfile
import threading

from conftest import ROOT

# The server: reads one JSON request per line ({"program", "args", "stdin", "numpy_seed", "env"}), answers one line
# "@@RESULT {code, stdout, stderr}".
SERVER = r"""
import contextlib, io, json, os, runpy, sys, traceback, warnings
sys.path.insert(0, ROOT)
from absl import flags
from tools import cli, runfolder
import numpy
import tools.tf1  # TensorFlow, once, before the first request
protocol = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    program = os.path.join(ROOT, request["program"])
    # The flags of the programs run before go (absl files a __main__'s flags under its path, sys.argv[0]), and the
    # program's file defines its own anew: nothing carries over from the command line before. (Kept, absl would
    # refuse another program's flag of the same name, and skip the program's own as those of a module imported
    # twice, except when the new module object got the old one's id: then it refuses them too.)
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if os.path.dirname(module) == ROOT:
            for flag in list(module_flags):
                if flag.name in flags.FLAGS:
                    delattr(flags.FLAGS, flag.name)
    flags.FLAGS.unparse_flags()
    sys.argv = [program, *request["args"]]
    cli.reset()
    saved = {name: os.environ.get(name) for name in request["env"]}
    os.environ.update(request["env"])  # for this command line only
    if request["numpy_seed"] is not None:  # the seeds a program draws, known
        numpy.random.seed(request["numpy_seed"])
    stdin = io.TextIOWrapper(io.BytesIO(request["stdin"].encode()), encoding="utf-8")
    out, err, code = io.StringIO(), io.StringIO(), 0
    # catch_warnings: the filters as they were, and a warning shown once per place is shown again, as in a new process.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        sys.stdin = stdin
        try:
            runpy.run_path(program, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
    runfolder.release_all()  # the folders a process gives back as it ends
    protocol.write("@@RESULT " + json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    protocol.flush()
"""


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class Server:
    """The process that runs command lines, started at once; run(...) runs one, close() ends it."""

    def __init__(self):
        # Its own stderr (TensorFlow's C++ lines; Python's, should it crash) goes to a file, shown if it ends.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, "-c", SERVER.replace("ROOT", repr(ROOT))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, cwd=ROOT)

    def run(self, program, args, stdin="", numpy_seed=None, env=None, timeout=600):
        """Runs one command line; a command line still running after `timeout` seconds ends the process."""
        request = {"program": program, "args": args, "stdin": stdin, "numpy_seed": numpy_seed, "env": env or {}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                if line.startswith("@@RESULT "):
                    answer = json.loads(line[len("@@RESULT "):])
                    return Result(answer["code"], answer["stdout"], answer["stderr"])
        finally:
            timer.cancel()
        code = self.process.wait()
        killed = f" (SIGKILL: still running after {timeout} s, or out of memory)" if code == -signal.SIGKILL else ""
        self.log.seek(0)
        raise RuntimeError(f"the process running {program} {args} ended with exit code {code}{killed}; the end of "
                           f"its stderr:\n{self.log.read()[-3000:]}")

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


_server = []  # the Server of this process of the tests (each pytest-xdist worker has its own), once started


def run(program, *args, stdin="", numpy_seed=None, env=None):
    """`python PROGRAM ARGS` (with `stdin`), run by the Server, started at the first call: a Result.
    `numpy_seed`: numpy's global generator seeded so first, for the seeds a program draws from it; `env`: environment
    variables set for this command line only."""
    if not _server:
        _server.append(Server())
    try:
        return _server[0].run(program, list(args), stdin, numpy_seed, env)
    except RuntimeError:
        _server.clear()  # it ended (crashed): the next call starts another
        raise


@atexit.register
def _close():
    for server in _server:
        server.close()
