"""Progress output: a live line on terminals, plain timed lines in cron logs."""

from __future__ import annotations

import io
import re

from batcher.executor import Counters
from batcher.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_interval_given_when_not_a_terminal():
    now = [0.0]
    out = io.StringIO()
    p = Progress(1000, 10, stream=out, clock=lambda: now[0], interval=5.0)
    c = Counters(calls=2, batches_done=2, pairs_done=200, throttled=1)
    for t in (1.0, 2.0, 6.0, 7.0, 12.0):
        now[0] = t
        p.update(c)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 6 s and 12 s: one line every 5 s
    assert "200/1,000 pairs" in lines[0] and "429s 1" in lines[0] and "ETA" in lines[0]
    assert "\r" not in out.getvalue()


def test_the_end_is_one_line_even_when_the_last_update_said_it():
    """The last figures are said once: a run whose last answer was just printed ended with the
    same line (the same JSON event) twice; one whose figures moved since ends with them."""
    now = [0.0]
    out = io.StringIO()
    p = Progress(300, 3, stream=out, clock=lambda: now[0])
    done = Counters(calls=3, batches_done=3, pairs_done=300)
    now[0] = 6.0
    p.update(done)
    p.close(done)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["300/300"]
    p = Progress(300, 3, stream=(out := io.StringIO()), clock=lambda: now[0])
    p.update(Counters(calls=2, batches_done=2, pairs_done=200), force=True)
    p.close(done)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["200/300", "300/300"]


def test_a_terminal_gets_a_bar_that_ends_on_its_last_figures():
    now = [0.0]
    out = FakeTTY()
    p = Progress(100, 1, stream=out, clock=lambda: now[0])
    now[0] = 1.0
    p.update(Counters(calls=1, batches_done=0, pairs_done=50))
    assert "50/100" in out.getvalue()
    p.close(Counters(calls=1, batches_done=1, pairs_done=100, throttled=3))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # what a terminal shows
    assert text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1].splitlines()[-1]
    assert "100/100" in last and "429s 3" in last and "batches 1/1" in last


def test_quiet_prints_nothing():
    out = io.StringIO()
    p = Progress(10, 1, stream=out, enabled=False)
    p.update(Counters(), force=True)
    p.close(Counters())
    assert out.getvalue() == ""


def test_a_long_setup_phase_spins_on_a_terminal_and_ends_with_its_duration():
    import time as clock

    from batcher.progress import Phases

    out = FakeTTY()
    phase = Phases(stream=out, delay=0.05)
    with phase("planning 9,600,000 pairs", "plan"):
        clock.sleep(0.4)  # longer than the delay: the spinner shows
    with phase("reading a small file", "scan"):
        pass  # quicker than the delay: nothing at all
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "planning 9,600,000 pairs …" in text  # the spinner's text
    assert re.search(r"planning 9,600,000 pairs: 0\.[3-9] s\n", text)
    assert "small file" not in text


def test_phases_go_to_the_json_log_and_never_to_a_plain_stream():
    from batcher.progress import Phases

    events: list[tuple[str, dict]] = []
    with Phases(stream=FakeTTY(), emit=lambda line, f: events.append((line, f)))("storing", "load"):
        pass
    assert events[0][0].startswith("storing: ") and events[0][1]["phase"] == "load"
    assert isinstance(events[0][1]["seconds"], float)
    plain = io.StringIO()
    with Phases(stream=plain, delay=0.0)("writing", "results"):
        pass
    assert plain.getvalue() == ""


def test_a_log_gets_a_few_lines_ever_further_apart_never_one_every_few_seconds():
    """Found by trying: with stderr in a cron log, an eight-hour job wrote a line every 5 s
    (5,760 lines, one a few seconds from its start): a log is read after the fact; it wants to
    see the job alive and how far it got, at a pace that stays readable."""
    for emit in (None, "json"):
        assert 20 <= len(times := _log_line_times(emit)) <= 60, len(times)
        assert times[0] >= 30  # a job of half a minute says only its end
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps == sorted(gaps) and max(gaps) <= 600  # never silent for more than 10 min


def _log_line_times(emit: str | None) -> list[int]:
    """The seconds at which an eight-hour job, updated each second, wrote a log line."""
    now = [0.0]
    out, events = io.StringIO(), []
    p = Progress(10**6, 10**4, stream=out, clock=lambda: now[0],
                 emit=(lambda line, f: events.append(line)) if emit else None)
    times = []
    for second in range(8 * 3600):
        now[0] = float(second)
        before = len(out.getvalue().splitlines()) + len(events)
        p.update(Counters(calls=second, batches_done=second, pairs_done=second * 100))
        if len(out.getvalue().splitlines()) + len(events) > before:
            times.append(second)
    return times


def test_a_long_phase_is_said_in_a_log_as_it_begins_to_look_long_and_when_it_ends():
    """A ten-million-row job read and planned for minutes wrote nothing to a cron log: one
    that seemed stuck could not be told from one at work. Quick phases stay unsaid."""
    import time as clock

    from batcher.progress import Phases

    out = io.StringIO()
    phase = Phases(stream=out, log_delay=0.05)
    with phase("planning 9,600,000 pairs", "plan"):
        clock.sleep(0.4)
    with phase("reading a small file", "scan"):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "planning 9,600,000 pairs …"
    assert re.fullmatch(r"planning 9,600,000 pairs: 0\.[3-9] s", lines[1])
    assert len(lines) == 2 and "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
