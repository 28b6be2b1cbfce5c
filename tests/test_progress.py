"""slmlab.progress: plain lines with counts and ETA when piped (exact, on a fake clock), a final line,
nothing on stdout, the CLIs' factory and its SLMLAB_PROGRESS switch, and the loops it is wired into."""

from __future__ import annotations

import io
import sys

import pytest

from slmlab.errors import SlmlabError
from slmlab.progress import Progress, duration, progress, tracker


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def plain(total, label="eval logic", every=10.0, clock=None):
    stream = io.StringIO()
    return Progress(total, label, every=every, terminal=False, stream=stream, clock=clock or FakeClock()), stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_are_periodic_with_counts_and_eta():
    clock = FakeClock()
    p, out = plain(120, clock=clock)
    with p:
        clock.now = 12.1
        p.advance(40)  # 12.1 s after the start line: due
        clock.now = 17.1
        p.advance(10)  # only 5 s later: not due
        clock.now = 22.6
        p.advance(10)  # 10.5 s after the last line: due
        clock.now = 36.0
        p.advance(60)  # the last item: the final line says it
    assert lines(out) == [
        "eval logic: 0/120 (0%) 0.0s elapsed",
        "eval logic: 40/120 (33%) 12.1s elapsed, ETA 24.2s",
        "eval logic: 60/120 (50%) 22.6s elapsed, ETA 22.6s",
        "eval logic: 120/120 (100%) done in 36.0s",
    ]


def test_unknown_total_every_zero_and_a_failed_loop():
    clock = FakeClock()
    p, out = plain(None, "label", every=0, clock=clock)
    with pytest.raises(RuntimeError), p:
        for _ in range(3):
            clock.now += 1.5
            p.advance()
        raise RuntimeError("boom")
    assert lines(out) == ["label: 0 done, 0.0s elapsed", "label: 1 done, 1.5s elapsed", "label: 2 done, 3.0s elapsed",
                          "label: 3 done, 4.5s elapsed", "label: stopped at 3 after 4.5s"]


def test_update_sets_totals_and_skip_keeps_resumed_items_out_of_the_rate():
    clock = FakeClock()
    p, out = plain(10, "series", every=0, clock=clock)
    p.skip(6)  # done before a resume: counted, not timed
    with p:
        clock.now = 60.0
        p.advance()  # one run in 60 s, three left
        p.update(7, total=8)  # the total became known to be smaller
    assert lines(out) == ["series: 6/10 (60%) 0.0s elapsed", "series: 7/10 (70%) 1m00s elapsed, ETA 3m00s",
                          "series: 7/8 (87%) 1m00s elapsed, ETA 1m00s", "series: 7/8 (87%) done in 1m00s"]


def test_quiet_and_tracker_without_a_factory_print_nothing(capsys):
    with Progress(5, "quiet", quiet=True) as p:
        p.advance(5)
    with tracker(None, 3, "library default") as p:
        p.advance(3)
    assert p.completed == 3
    assert capsys.readouterr() == ("", "")


def test_progress_goes_to_stderr_never_stdout(capsys, monkeypatch):
    monkeypatch.delenv("SLMLAB_PROGRESS", raising=False)
    with progress(4, "work") as p:  # captured stderr is not a terminal: plain lines
        p.advance(4)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0] == "work: 0/4 (0%) 0.0s elapsed" and err.splitlines()[-1].startswith("work: 4/4 (100%) done in")


def test_slmlab_progress_switch(capsys, monkeypatch):
    monkeypatch.setenv("SLMLAB_PROGRESS", "off")
    with progress(2, "off") as p:
        p.advance(2)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("SLMLAB_PROGRESS", "bar")
    assert progress(2, "x").mode == "bar" and progress(2, "x", bar=False).mode == "plain"
    monkeypatch.setenv("SLMLAB_PROGRESS", "loud")
    with pytest.raises(SlmlabError, match="SLMLAB_PROGRESS='loud' is not one of auto, bar, plain, off"):
        progress(2, "x")


def test_the_bar_draws_counts_and_eta_on_stderr_and_nests(capsys):
    with Progress(2, "outer", terminal=True) as outer:
        with Progress(3, "inner", terminal=True) as inner:
            inner.advance(3)
        outer.advance(2)
    assert outer.mode == inner.mode == "bar"
    out, err = capsys.readouterr()
    assert out == ""
    inner_line = next(line for line in err.splitlines() if line.startswith("inner"))
    assert "3/3" in inner_line and "ETA" in inner_line and any("2/2" in line for line in err.splitlines())


def test_duration_text():
    assert [duration(s) for s in (0, 12.14, 59.96, 245, 7380)] == ["0.0s", "12.1s", "1m00s", "4m05s", "2h03m"]


# --------------------------------------------------------------------------- wired loops


class Recorder:
    """A progress factory that keeps every Progress it made (plain, into one buffer, on a frozen clock)."""

    def __init__(self):
        self.made: list[Progress] = []
        self.stream = io.StringIO()

    def __call__(self, total, label) -> Progress:
        self.made.append(Progress(total, label, every=0, terminal=False, stream=self.stream, clock=FakeClock()))
        return self.made[-1]

    def finished(self) -> dict[str, tuple[int, int | None]]:
        return {p.label: (p.completed, p.total) for p in self.made}


def test_data_generate_and_basins_label_report_progress(tmp_path):
    from slmlab.data.recipes import generate_dataset
    from slmlab.evaluate.basins import label_many

    rec = Recorder()
    res = generate_dataset("v6-golden", tmp_path / "d", count=60, progress=rec)
    label_many(["a b c " * 20, "The cat sat on the mat and looked out of the window."], use_embeddings=False, progress=rec)
    assert rec.finished() == {"data v6-golden": (60, 60), "basins label": (2, 2)}
    assert "data v6-golden: 60/60 (100%) done in 0.0s" in lines(rec.stream)
    silent = generate_dataset("v6-golden", tmp_path / "e", count=60)  # the default: no progress, same bytes
    assert silent.manifest["content_hash"] == res.manifest["content_hash"]


def test_eval_and_basin_map_count_generations(tmp_path):
    from slmlab.evaluate.basin_map import MapSettings, map_basins
    from slmlab.evaluate.suites import run_suite

    rec = Recorder()
    run_suite("logic", "tiny-random", limit=3, progress=rec)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"input": "hello"}\n{"input": "tell me a story"}\n', encoding="utf-8")
    map_basins("tiny-random", corpus=str(corpus), settings=MapSettings(samples=2, max_new_tokens=4, batch_size=1),
               progress=rec)
    assert rec.finished() == {"eval logic": (3, 3), "basins map": (4, 4)}
    assert lines(rec.stream)[-2] == "basins map: 3/4 (75%) 0.0s elapsed, ETA 0.0s"  # one line per batch of 1


def test_cli_prints_progress_on_stderr_when_piped(monkeypatch, capsys, tmp_path):
    """`slmlab steer extract` with stderr captured (not a terminal): plain lines on stderr, stdout unchanged."""
    from slmlab.cli import main

    corpus = tmp_path / "corpus"
    (corpus / "stories").mkdir(parents=True)
    for name, text in {"joy": "The sun came out and she laughed.", "fear": "A noise in the hall made him freeze.",
                       "calm": "The lake was still and so was he."}.items():
        (corpus / "stories" / f"{name}.txt").write_text(text, encoding="utf-8")
    monkeypatch.delenv("SLMLAB_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "argv", ["slmlab", "steer", "extract", str(corpus), "--model", "tiny-random",
                                      "-o", str(tmp_path / "vec"), "-b", "2"])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    assert out.strip() == str(tmp_path / "vec")  # stdout: only the result
    progress_lines = [line for line in err.splitlines() if line.startswith("steer extract (batches): ")]
    assert progress_lines[0] == "steer extract (batches): 0/2 (0%) 0.0s elapsed"
    assert progress_lines[-1].startswith("steer extract (batches): 2/2 (100%) done in ")
