"""TensorFlow's import-time C++ log lines held to `TF_CPP_MIN_LOG_LEVEL`, which absl ignores before it is set up.

Why: on CPUs where TensorFlow turns oneDNN on (Intel's with AVX-512 VNNI, AMX), importing TensorFlow 2.21 prints,
twice, `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR` and `I0000 ...
port.cc:153] oneDNN custom operations are on ...`, whatever `TF_CPP_MIN_LOG_LEVEL` says: absl writes every message
logged before its initialisation to stderr (abseil-cpp#1718, #1957). Every tf_rnn command would start with four
lines of it. So the first `import tensorflow` after `import tf_rnn` runs with file descriptor 2 captured; what it
wrote goes back to stderr afterwards, less the absl lines below the level the variable asks for and absl's banner.
Nothing else is touched: the module TensorFlow's import returns is its own, its loader and spec untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# An absl log line: severity letter, MMDD, time, thread, file:line] — e.g. `I0000 00:00:1796.5  2006 port.cc:153] `.
ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:[\d.]+ +\d+ [^ \]]+:\d+\] ")
LEVELS = "IWEF"  # TF_CPP_MIN_LOG_LEVEL 1 drops I, 2 also W, 3 also E.


def kept(text: str, min_level: int) -> str:
    """`text` less absl's lines of a severity below `min_level` and, when any level is filtered, absl's banner."""
    if min_level <= 0:
        return text
    out = []
    for line in text.splitlines(keepends=True):
        match = ABSL_LINE.match(line)
        if line.rstrip("\n") == BANNER or (match and LEVELS.index(match.group(1)) < min_level):
            continue
        out.append(line)
    return "".join(out)


@contextlib.contextmanager
def stderr_filtered(min_level: int):
    """Runs the block with fd 2 captured, then writes what it wrote, less `kept`'s drops, back to fd 2."""
    _flush_stderr()  # What Python's stderr holds so far goes out before, not inside, the capture.
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            # Back to fd 2, not sys.stderr: where it would have gone (a notebook's sys.stderr is the cell, fd 2 the
            # server's terminal).
            data = kept(capture.read().decode(errors="replace"), min_level).encode()
            while data:
                data = data[os.write(2, data):]


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # None under pythonw; a replaced stream may not flush.
        sys.stderr.flush()


class _Loader(importlib.abc.Loader):
    """The module's own loader, its `exec_module` run inside `stderr_filtered`; gone again once it has run."""

    def __init__(self, inner, min_level: int):
        self.inner, self.min_level = inner, min_level

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.inner  # The imported module keeps no trace of this.
        with stderr_filtered(self.min_level):
            self.inner.exec_module(module)


class QuietImport(importlib.abc.MetaPathFinder):
    """A one-shot finder: the first import of `name` (top level) runs with its C++ log lines filtered."""

    def __init__(self, name: str = "tensorflow", min_level: int | None = None):
        self.name = name
        self.min_level = min_level

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # One shot: later imports find the module in sys.modules anyway.
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        level = self.min_level if self.min_level is not None else _level()
        if spec is None or spec.loader is None or level <= 0:
            return spec
        spec.loader = _Loader(spec.loader, level)
        return spec


def _level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def install() -> None:
    """Filters the next first import of TensorFlow in this process (nothing if it is imported already)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietImport())
