"""Every HTML page slmlab writes, opened in headless Chromium (issue 16, "Reports in a real browser").

Each page is built from synthetic inputs (run files, series records, dream rounds) or the tiny random
model, then opened: no console or page errors, nothing requested outside file:/data: or the loopback
host, every plot present, sized and drawn with data. Screenshots go to test-artifacts/screenshots/.
Pages: run report, compare report, steering quality, dream report (+ its rounds.svg), quickstart
report, and the HTML pages of ``slmlab serve``. (The live dashboard is a terminal view, not HTML;
basin maps are JSON, drawn as bars in the quickstart report.)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from browser import check_page, chromium_browser, is_local, missing_reason, open_page  # noqa: F401 - a fixture
from test_dashboard import make_run

RUN_PLOTS = ["loss", "grad norm", "learning rate", "spectral entropy", "phi proximity", "dominant ratio", "phi",
             "probe: loop and collapse rate"]


def test_only_local_urls_are_allowed():
    assert all(is_local(u) for u in ("file:///tmp/r.html", "data:image/png;base64,AA", "about:blank",
                                     "blob:file:///x", "http://127.0.0.1:8000/docs", "http://localhost/x"))
    assert not any(is_local(u) for u in ("https://cdn.jsdelivr.net/npm/swagger-ui", "http://10.0.0.1/",
                                         "https://fonts.googleapis.com/css", "//example.com/x.js"))


def test_x_ticks_name_their_own_positions():
    """The report charts' x labels (checked without a browser too): whole steps sit at their own value."""
    from slmlab.evaluate.report import x_ticks

    assert x_ticks(0, 2, integers=True) == [(0.0, "0"), (1.0, "1"), (2.0, "2")]  # not 0, 0, 1, 2, 2
    assert [label for _, label in x_ticks(1, 8, integers=True)] == ["1", "3", "4", "6", "8"]
    assert all(float(label) == value for value, label in x_ticks(1, 8, integers=True))
    assert x_ticks(10.0, 12.0, integers=False)[1] == (10.5, "10.5")


def test_missing_browser_is_named(monkeypatch):
    import browser as b

    monkeypatch.setattr(b, "CHROMIUM", Path("/nonexistent/chromium"))
    assert missing_reason() in ("chromium not installed: apt-get install chromium",
                                "playwright not installed: pip install -e '.[test]'")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but"):
        b.require_browser()


def test_the_checker_sees_errors_outside_requests_and_empty_plots(browser, tmp_path):
    """A deliberately broken page: the checker must report each defect (or the real checks prove nothing)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><head><link rel='stylesheet' href='https://fonts.googleapis.com/css?x'>"
                   "</head><body><svg width='200' height='100' aria-label='empty'><line x1='0' x2='9' y1='0' y2='0' "
                   "stroke='#000'/></svg><svg width='200' height='100' aria-label='drawn'><polyline fill='none' "
                   "stroke='#000' points='1,1 50,40'/></svg><svg width='200' height='100' aria-label='ticks'><circle cx='5' "
                   "cy='5' r='2'/><text x='10' y='90' text-anchor='middle'>1</text><text x='55' y='90' "
                   "text-anchor='middle'>3</text><text x='90' y='90' text-anchor='middle'>5</text><text x='150' y='20'>"
                   "a legend too long for its box</text></svg>"
                   "<img src='missing.png'>"
                   "<script>console.error('boom'); undefined_call();</script></body></html>")
    report = open_page(browser, bad.as_uri(), "checker-self-test")
    assert "boom" in report.console_errors
    assert report.page_errors and "undefined_call" in report.page_errors[0]
    assert report.outside_requests == ["https://fonts.googleapis.com/css?x"]
    assert report.broken_images and report.broken_images[0].endswith("missing.png")
    empty, drawn, ticks = report.plots
    assert (empty.label, empty.marks, drawn.label, drawn.lines, ticks.dots) == ("empty", 0, "drawn", 1, 1)
    assert drawn.width == 200 and drawn.height == 100
    assert [t for _, t in ticks.xticks] == ["1", "3", "5"] and ticks.misplaced_ticks() == ["3 at 55px (expected 50px)"]
    assert any("empty plot 'empty'" in p for p in report.problems())
    assert any("plot 'ticks': x labels off the scale" in p for p in report.problems())
    assert ticks.clipped == ["a legend too long for its box"] and not drawn.clipped
    assert report.screenshot.is_file() and report.screenshot.stat().st_size > 1000


# --------------------------------------------------------------------------- run report


def test_run_report_in_browser(browser, tmp_path):
    from slmlab.watch.run_report import write_run_report

    report = check_page(browser, write_run_report(make_run(tmp_path)), "run-report", RUN_PLOTS)
    loss = report.plots[0]
    # kept steps 1-7 as a line, rolled-back steps 5-6 as dots (step 6 is NaN: not drawn)
    assert loss.lines == 1 and loss.dots == 1
    assert (loss.width, loss.height) == (880 + 2, 260 + 2)  # the report's CSS gives every svg a 1px border
    assert report.plots[-1].dots == 2  # one probe: loop rate and collapse rate, a dot each


# --------------------------------------------------------------------------- compare report


def _series_dir(root: Path) -> Path:
    """A finished 2-cell × 3-seed series, as files (series.json, series-run.json, metrics.jsonl)."""
    seeds = [0, 1, 2]
    cells = [{"name": f"adapter.r={r}", "slug": f"adapter.r={r}", "coords": {"adapter.r": r}} for r in (4, 8)]
    meta = {"name": "tiny", "baseline": "adapter.r=4", "cells": cells,
            "spec": {"seeds": seeds, "primary": {"metric": "eval_loss", "minimum_effect": 0.01, "higher_is_better": False}}}
    (root / "series.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "series.json").write_text(json.dumps(meta))
    for k, cell in enumerate(cells):
        for seed in seeds:
            run_dir = root / "cells" / cell["slug"] / f"seed-{seed}"
            run_dir.mkdir(parents=True)
            shift = 0.1 * k + 0.01 * seed
            metrics = {"eval_loss": 2.0 - shift, "final_loss": 1.9 - shift, "train_seconds": 10.0 + 5 * k + seed,
                       "tokens_seen": 4096.0, "peak_rss_mb": 900.0 + k, "logic.accuracy": 0.25 + shift}
            (run_dir / "series-run.json").write_text(json.dumps({"status": "done", "metrics": metrics}))
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - s * 0.2 - shift}) + "\n"
                                                           for s in range(1, 5)))
    return root


def test_compare_report_in_browser(browser, tmp_path):
    from slmlab.compare.compare import compare
    from slmlab.compare.report import to_html

    path = to_html(compare([_series_dir(tmp_path / "series")]), tmp_path / "compare.html")
    report = check_page(browser, path, "compare-report",
                        ["training loss by step", "eval_loss", "cost (train seconds, x) vs eval_loss (y)"])
    bands, bars, pareto = report.plots
    assert bands.lines == 4  # per cell: the seed envelope (polygon) and the mean line
    assert bars.bars == 2 and pareto.dots == 2


# --------------------------------------------------------------------------- steering quality


def test_steer_quality_report_in_browser(browser, tiny, tmp_path):
    import torch

    from slmlab.steer.extract import extract
    from slmlab.steer.quality import QUALITY_HTML, quality

    shipped = Path(__file__).resolve().parents[1] / "examples" / "steer"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(shipped, "tiny-random", tmp_path / "out", loaded=tiny)
        q = quality(tmp_path / "out", shipped, "tiny-random", loaded=tiny)
    finally:
        torch.set_num_threads(threads)
    report = check_page(browser, tmp_path / "out" / QUALITY_HTML, "steer-quality", ["By layer"])
    assert report.plots[0].lines == 2 and len(q["layers"]) >= 2  # mean AUROC and first-PC ratio over layers


# --------------------------------------------------------------------------- dream report


def _dream_round(k: int) -> dict:
    accuracy = [0.25, 0.5, 0.75][k]
    record = {"round": k, "heldout": {"n": 4, "correct": int(4 * accuracy), "accuracy": accuracy, "no_glyph": 1,
                                      "ci95": [max(accuracy - 0.3, 0.0), min(accuracy + 0.3, 1.0)]},
              "next_temperature": 0.5 * 1.25 ** (k + 1)}
    if k:
        record.update(temperature=0.5 * 1.25 ** k, failure_rate=0.6 - 0.2 * k, samples=8, failures=5 - 2 * k,
                      pairs=3, pairs_chosen_by_model=1, steps=2, loss=0.7 - 0.1 * k)
    return record


def test_dream_report_in_browser(browser, tmp_path):
    from slmlab.dream import load_dream_config
    from slmlab.dream.report import write_dream_report

    config = load_dream_config(data={"name": "d", "model": "tiny-random", "output_dir": str(tmp_path)})
    path = write_dream_report(tmp_path, [_dream_round(k) for k in range(3)], config)
    title = "per round: held-out accuracy, failure rate of the samples, sampling temperature"
    report = check_page(browser, path, "dream-report", [title, "preference loss by round"])
    rounds = report.plots[0]
    assert rounds.lines == 3 and rounds.dots == 6  # accuracy, failure rate, T; CI ends as 3 × 2 dots
    chart = check_page(browser, tmp_path / "rounds.svg", "dream-rounds-svg", [title])
    assert (chart.plots[0].lines, chart.plots[0].dots) == (3, 6)


# --------------------------------------------------------------------------- quickstart report


def _demo_result(correct: int, basins: dict[str, float]) -> dict:
    samples = [{"input": f"puzzle {i}", "answer": "✓", "generation": "✓" if i < correct else "✗", "correct": i < correct}
               for i in range(4)]
    return {"correct": correct, "n": 4, "accuracy": correct / 4, "no_glyph": 0, "chance": 1 / 3, "majority": 0.5,
            "samples": samples, "basins": basins}


def test_quickstart_report_in_browser(browser, tmp_path):
    from slmlab.demo import write_demo_report

    run_dir = tmp_path / "train"
    run_dir.mkdir()
    lines = [{"step": s, "loss": 3.0 - 0.3 * s, **({"eval_loss": 2.9 - 0.2 * s} if s % 2 == 0 else {})} for s in range(1, 7)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    report = {"model": "tiny-random", "dataset": "0123456789abcdef",
              "before": _demo_result(1, {"CREATIVE": 0.5, "SEMANTIC_LOOP": 0.25, "TOKEN_COLLAPSE": 0.25}),
              "after": {**_demo_result(3, {"CREATIVE": 0.75, "UNKNOWN": 0.25}), "steps": 6}}
    path = write_demo_report(tmp_path / "report.html", report, run_dir)
    page = check_page(browser, path, "quickstart-report", ["loss by optimizer step", "share of generations per basin"])
    loss, basins = page.plots
    assert loss.lines == 2 and basins.bars == 5  # 3 basins before, 2 after


# --------------------------------------------------------------------------- slmlab serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``slmlab serve``'s app on a loopback port (uvicorn in a thread), for its HTML pages."""
    import uvicorn

    from slmlab.models import load
    from slmlab.serve import ServeConfig, create_app

    model, tok = load("tiny-random")  # the engine wraps its model in place: not the shared one
    app = create_app(ServeConfig.model_validate({"model": "tiny-random"}), model=model, tokenizer=tok)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(30)


def test_serve_pages_in_browser(browser, served):
    """The server's only HTML would be FastAPI's /docs and /redoc, whose scripts come from a CDN: none
    may be served. Whatever the server answers in a browser must stay on the loopback host."""
    for route in ("/docs", "/redoc", "/health"):
        page = open_page(browser, served + route, f"serve{route.replace('/', '-')}")
        assert not page.outside_requests and not page.page_errors, (route, page.problems())
    assert httpx.get(served + "/docs").status_code == 404 and httpx.get(served + "/redoc").status_code == 404
    assert httpx.get(served + "/openapi.json").json()["info"]["title"] == "slmlab serve"
