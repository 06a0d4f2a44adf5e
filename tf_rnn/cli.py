"""CLI: the one-line flag parser and the one error → exit-code mapping that every entry point uses."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import sys
import typing
from pathlib import Path

USAGE, RUN, INTERRUPTED = 2, 1, 130  # Exit codes: bad flag or config value; run or data error; Ctrl-C.
PIPE_CLOSED = 128 + 13  # stdout's reader went away (`| head`): what coreutils exit with, killed by SIGPIPE.
TRACEBACK_ENV = "TF_RNN_TRACEBACK"  # "1": let unexpected exceptions through with their traceback (debugging).


def plural(n: int, word: str) -> str:
    """`1 epoch`, `2 epochs`: counts in messages read as English."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class UsageError(Exception):
    """A bad flag or config value: exit 2. `str()` is one line naming the value and the fix."""


class RunError(Exception):
    """The run cannot start or went wrong in a way the user can fix (data, files, NaN): exit 1, one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (no usage block, no traceback) and exits with code 2."""

    def error(self, message):
        self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")


@contextlib.contextmanager
def native_stderr_silenced():
    """Discards what native code writes to stderr meanwhile (LiteRT's "INFO: Created ... XNNPACK delegate", the int8
    calibrator's settings line): Python's exceptions still say what failed, and a CLI's stderr stays for errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def prog_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return f"python -m {spec.name}" if spec else Path(sys.argv[0] or "tf_rnn").name


def fail(message: str, code: int = USAGE) -> typing.NoReturn:
    """Prints one `error:` line and exits (no traceback for the user's mistakes)."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"{prog_name()}: error: {first_line}", file=sys.stderr)
    raise SystemExit(code)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (poll says POLLERR), not some other broken pipe."""
    try:
        poller = select.poll()  # Not on Windows: AttributeError.
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout closed, or not a file (io.UnsupportedOperation).
        return False


def entry_point(on_interrupt: str = "interrupted"):
    """Wraps a `main(argv) -> int` so every CLI maps errors the same way.

    UsageError → exit 2; RunError → exit 1; Ctrl-C → 130 with `on_interrupt` as its line; stdout's pipe closed by
    its reader → 141, silently; any other exception → exit 1 with one line naming it (a bug: `TF_RNN_TRACEBACK=1`
    shows the traceback). argparse's own exits pass.
    """

    def wrap(body):
        @functools.wraps(body)
        def main(argv=None) -> int:
            try:
                code = body(argv) or 0
                sys.stdout.flush()  # Here, not at exit: a reader gone by now is the closed pipe handled below.
                return code
            except UsageError as e:
                fail(str(e), USAGE)
            except RunError as e:
                fail(str(e), RUN)
            except KeyboardInterrupt:
                fail(on_interrupt, INTERRUPTED)
            except Exception as e:  # noqa: BLE001 - one line instead of a raw traceback, unless asked for.
                if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
                    # `predict ... | head` read what it wanted: end quietly. stdout goes to /dev/null first, or
                    # Python's flush at exit writes to the closed pipe again and prints "Exception ignored".
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    raise SystemExit(PIPE_CLOSED) from None
                if os.environ.get(TRACEBACK_ENV) == "1":
                    raise
                fail(f"unexpected {type(e).__name__}: {e} (rerun with {TRACEBACK_ENV}=1 for the traceback)", RUN)

        return main

    return wrap
