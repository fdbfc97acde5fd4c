"""Progress bars that stay readable in a log file.

In a terminal, tqdm redraws one line. Sent to a file or a pipe (``make demo
2>&1 | tee demo.log``, a CI log), the same redraws pile up as one line of
carriage returns. ``bar`` keeps the terminal behaviour and otherwise writes
one whole line every ``log_interval`` seconds, plus the final one.
"""

import sys

LOG_INTERVAL = 5.0  # Seconds between lines when the output is not a TTY.


class _Lines:
    """A file wrapper turning tqdm's ``\\r`` redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, text):
        # tqdm writes "\r<status>" per update and "\n" (or "\r<spaces>") at
        # the end: each status becomes a line, the blanks are dropped, and
        # so is the repeat that closing a bar redraws.
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self):
        self.stream.flush()


def is_terminal(stream):
    """Whether ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # A closed stream.
        return False


def bar(*, file=None, log_interval=LOG_INTERVAL, **kwargs):
    """A ``tqdm`` bar: redrawn in a terminal, whole lines elsewhere.

    Args:
        file: the stream (default ``sys.stderr``, tqdm's).
        log_interval: seconds between lines when ``file`` is not a terminal.
        **kwargs: passed to ``tqdm`` (``total``, ``unit``, ``desc``,
            ``disable``, ``mininterval``, ...).

    Returns:
        A ``tqdm`` instance.
    """
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    if not is_terminal(file):
        # A log has no width to fill and may not render block characters.
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)
        kwargs.update(file=_Lines(file), mininterval=log_interval,
                      maxinterval=max(log_interval, 10.0))
        return tqdm(**kwargs)
    return tqdm(file=file, **kwargs)
