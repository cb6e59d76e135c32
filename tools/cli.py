"""What the programs (ptb_word_lm.py, lm.py, benchmark.py) share at their edge with the user.

- Every flag's allowed values (tools/ranges.py), checked when the command line is parsed: before
  TensorFlow is imported (`parse_first`), so a mistyped flag ends the program at once, not seconds later.
- Errors the user can fix end the program with one line on stderr and exit code 2; a file
  that cannot be written ends it with one line and exit code 1: never a traceback.
- SIGINT (Ctrl-C) and SIGTERM end it with one line and exit code 128 + the signal number.
  Inside `signals_deferred()` (the training loop) a signal is only recorded, so that the
  trainer can save before it stops.

This module imports no TensorFlow, so that it is in place before TensorFlow's slow import, and
it installs its signal handler before it imports anything else: each program imports it first.
"""
import os
import signal
import sys


class Stop(Exception):
    """The program ends early, with one line that says why and what to do next, and its own exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """A signal arrived; BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum} ({signal.Signals(signum).name})")
        self.signum = signum


received = []  # signals recorded inside signals_deferred()
_state = {"main": False, "defer": False, "at_once": False}
_stderr = os.dup(2)  # stderr as it is now: tf1 silences fd 2 while TensorFlow is imported


def _on_signal(signum, frame):
    if _state["defer"]:
        received.append(signum)
    elif _state["main"]:
        raise Interrupted(signum)
    else:  # still importing or parsing: nothing written yet, nothing to clean up
        os.write(_stderr, f"error: stopped by signal {signum} while starting\n".encode())
        os._exit(128 + signum)


for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _on_signal)

# Only now the rest: absl alone takes tens of milliseconds to import.
import contextlib  # noqa: E402
import errno  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from absl import app, flags  # noqa: E402

from tools import ranges  # noqa: E402

USAGE, WRITE = 2, 1  # exit codes: a bad input; a failed write (full disk, permissions)

@contextlib.contextmanager
def signals_deferred():
    """Inside: SIGINT and SIGTERM are recorded in `received`, for the caller to act on."""
    _state["defer"] = True
    try:
        yield
    finally:
        _state["defer"] = False


@contextlib.contextmanager
def new_folder(path, flag):
    """Yields a temporary path that becomes the folder `path` only if the block ends without an error.

    So a folder written here (a SavedModel, a projector export) appears whole or not at all,
    and a failure leaves neither a half-written folder nor an empty parent it created.
    """
    if os.path.lexists(path):
        raise ValueError(f"{flag}={path} exists already: choose a new folder")
    check_no_file_in_the_way(path, flag)
    top = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    created = top != os.path.abspath(path)  # top: the highest missing parent, which makedirs creates
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise ValueError(f"cannot create {flag}={path} ({e.strerror}): choose a writable folder")
    try:
        yield os.path.join(scratch, "new")
        os.rename(os.path.join(scratch, "new"), path)
    finally:
        shutil.rmtree(top if created and not os.path.exists(path) else scratch, ignore_errors=True)


def check_no_file_in_the_way(path, flag):
    """Refuses a folder path under a file (data/notes.txt/run): no folder can be made there."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}={path} is under {folder}, a file, not a folder: choose a folder path")


def _check_ranges():
    """Registers a validator for each defined flag that has a range (absl runs them at parse time)."""
    for name, (kind, test, _) in ranges.RANGES.items():
        if test is not None and name in flags.FLAGS:
            flags.register_validator(name, lambda v, name=name: ranges.in_range(name, v), message=ranges.advice(name))


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except SystemExit:  # only --help (and --helpfull, ...) exit while parsing, with 1 after printing the help
        sys.exit(0)
    except flags.Error as e:
        fail(f"{e}; python {os.path.basename(argv[0])} --help lists the flags")


def parse_first(arguments=0):
    """Parses and checks the command line now; returns what is left of it (the program's name, lm.py's command).
    `arguments`: how many words the program takes besides its flags (lm.py: its command); more are refused.

    A program calls it after defining its flags and before importing TensorFlow (seconds), when it runs as a
    program (`if __name__ == "__main__"`): imported by the tests or the notebook, it parses nothing.
    """
    app.define_help_flags()  # --help, which app.run would define only later
    _check_ranges()
    _state["argv"] = _parse(sys.argv)
    extra = _state["argv"][1 + arguments:]
    if extra:
        fail(f"unexpected argument {extra[0]!r}: flags are written --name=value; python "
             f"{os.path.basename(sys.argv[0])} --help lists them")
    return _state["argv"]


def reset():
    """Back to the state before parse_first, for a process that runs programs one after another (tests/in_process.py)."""
    _state.update(argv=None, main=False, defer=False, at_once=False)
    received.clear()


def fail(message, code=USAGE, prefix="error: "):
    print(prefix + message, file=sys.stderr, flush=True)
    if _state["at_once"]:
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def exit_at_once():
    """From now on the program ends without Python's shutdown: a thread is left inside TensorFlow (see
    distribute.Replicas.run_at_start), and Python, ending it from under TensorFlow's C++, would abort."""
    _state["at_once"] = True


def write_advice(error):
    """What to do about a write the file system refused (an OSError): free space, or another folder."""
    text = f"{error.strerror} {error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space" in text or "quota" in text:
        return "free space on that disk, or choose a folder on another one"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission denied" in text or "Read-only" in text:
        return "make it writable, or choose a folder you can write to"
    return "free space or choose a writable folder"


def run(main, errors=(ValueError,)):
    """app.run(main) with checked flags, one-line errors and signals that end the program cleanly.

    `errors`: the exception classes whose message is meant for the user (exit code 2).
    """
    parsed = _state.get("argv") or parse_first()  # the program's parse_first, or now

    def guarded(argv):
        _state["main"] = True
        try:
            main(argv)
        except Interrupted as e:
            fail(str(e), 128 + e.signum)
        except Stop as e:
            fail(f"Stopped: {e}", e.exit_code, prefix="")
        except errors as e:
            fail(str(e))
        except OSError as e:  # a write the disk or the permissions refused
            fail(f"{e.strerror or e} ({e.filename or 'a file'}): {write_advice(e)}", WRITE)

    app.run(guarded, flags_parser=lambda _: parsed)  # app.run hands it to guarded
