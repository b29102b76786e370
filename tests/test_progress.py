"""mrcnn.progress: what a log file and a terminal see."""

from __future__ import annotations

import io

from mrcnn.progress import Progress, _format_seconds, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_track_yields_the_items_unchanged():
    stream = io.StringIO()
    assert list(track(iter(range(5)), total=5, stream=stream)) == list(range(5))


def test_a_log_gets_a_final_line_and_no_flood():
    stream = io.StringIO()
    # every=3600: only the last step is due, whatever the speed of the machine.
    list(track(range(250), label="detect", unit="img", stream=stream, every=3600))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # the first step (due at once) and the end
    assert lines[0].startswith("detect 1/250 [")
    assert lines[-1].startswith("detect 250/250 [") and "img/s" in lines[-1]
    assert "ETA" not in lines[-1]


def test_every_step_is_printed_when_every_is_zero():
    stream = io.StringIO()
    list(track(range(4), label="x", stream=stream, every=0))
    assert [line.split(" [")[0] for line in stream.getvalue().splitlines()] == [
        "x 1/4", "x 2/4", "x 3/4", "x 4/4"]


def test_a_terminal_line_is_rewritten_in_place():
    stream = Terminal()
    list(track(range(3), label="eval", stream=stream))
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    assert "eval 3/3" in text.rsplit("\r", 1)[1]


def test_unknown_total_and_early_stop_still_end_with_the_count():
    stream = io.StringIO()
    for k in track((i for i in range(100)), label="frames", stream=stream, every=3600):
        if k == 6:
            break
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("frames 6 [")  # items 0..5 finished and "ETA" not in last


def test_verbose_zero_prints_nothing():
    stream = io.StringIO()
    list(track(range(3), stream=stream, verbose=0))
    assert stream.getvalue() == ""


def test_eta_is_remaining_steps_over_rate():
    progress = Progress(10, label="p", stream=io.StringIO(), verbose=0)
    progress.count = 5
    progress.start -= 5.0  # 5 steps in 5 s -> 1 step/s -> 5 s left
    text = progress.text()
    assert "1.00 it/s" in text and "ETA 5.0s" in text


def test_format_seconds():
    assert _format_seconds(3.21) == "3.2s"
    assert _format_seconds(125) == "2m05s"
    assert _format_seconds(3 * 3600 + 61) == "3h01m"
