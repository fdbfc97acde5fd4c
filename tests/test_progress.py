"""Tests for the progress bars (mtct_tf/progress.py) in a log and a TTY."""

import io

from mtct_tf import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_whole_lines_at_the_interval():
    log = io.StringIO()
    with progress.bar(total=1000, desc="crop", file=log,
                      log_interval=3600) as bar:
        for _ in range(1000):
            bar.update(1)
        bar.set_postfix(img_s="9.0", refresh=False)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # The first redraw (0/1000) and the closing one; the 1000 updates in
    # between fall inside the interval.
    assert len(lines) == 2, lines
    assert lines[0].startswith("crop:   0%") and "0/1000" in lines[0]
    assert lines[1].startswith("crop: 100%") and "1000/1000" in lines[1]
    assert "img_s=9.0" in lines[1]


def test_terminal_redraws_one_line():
    tty = _Terminal()
    with progress.bar(total=3, desc="crop", file=tty, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    text = tty.getvalue()
    assert text.count("\r") >= 3 and text.count("\n") == 1
    assert progress.is_terminal(tty) and not progress.is_terminal(
        io.StringIO())


def test_keras_bar_writes_a_line_per_epoch_in_a_log(monkeypatch):
    from mtct_tf import callbacks

    params = {"verbose": "auto", "epochs": 2, "steps": 5}
    monkeypatch.setattr("sys.stdout", io.StringIO())
    logged = callbacks.CompactProgbar()
    logged.set_params(params)
    assert logged.verbose == 2
    monkeypatch.setattr("sys.stdout", _Terminal())
    shown = callbacks.CompactProgbar()
    shown.set_params(params)
    assert shown.verbose == 1
    # An explicit verbosity is kept.
    monkeypatch.setattr("sys.stdout", io.StringIO())
    chosen = callbacks.CompactProgbar()
    chosen.set_params(dict(params, verbose=1))
    assert chosen.verbose == 1
