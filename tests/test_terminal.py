"""The job's terminal: a progress bar fed by the monitor's counts, Ray's logs in a file, --json results alone on stdout."""

from __future__ import annotations

import io
import logging

from operators.failures import FailureMonitor
from pipelines.terminal import JobProgress, ray_logs_to_file, stdout_for_results


def test_progress_bar_shows_done_of_listed_and_failures():
    out = io.StringIO()
    bar = JobProgress(enabled=True, file=out)
    monitor = FailureMonitor(1.0)
    monitor.add_listed(5)
    monitor.record(2, 1, ["bad"], unchanged=1)
    bar(monitor.state())
    assert (bar.bar.n, bar.bar.total) == (3, 5)
    bar.close()
    text = out.getvalue()
    assert "3/5" in text and "written 1, unchanged 1, failed 1" in text


def test_progress_bar_is_silent_off_a_terminal():
    out = io.StringIO()  # not a TTY: --json output and CI logs stay clean
    bar = JobProgress(file=out)
    bar({"listed": 2, "processed": 2, "failed": 0, "unchanged": 0})
    bar.close()
    assert out.getvalue() == ""


def test_ray_logs_go_to_a_file(tmp_path):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in ("ray", "ray.data", "ray.serve")}
    try:
        path = ray_logs_to_file(str(tmp_path))
        logging.getLogger("ray.data").warning("memory warning")
        assert path.parent == tmp_path and "memory warning" in path.read_text()
        assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = before
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers[:], logging.getLogger(n).propagate = handlers, propagate


def test_json_results_own_stdout(capsys):
    with stdout_for_results(True) as results:
        print("(raylet) a node died")  # what Ray's driver prints on sys.stdout meanwhile
        print('{"written": 1}', file=results)
    print("after")
    out, err = capsys.readouterr()
    assert out == '{"written": 1}\nafter\n' and err == "(raylet) a node died\n"


def test_without_json_stdout_is_left_alone(capsys):
    with stdout_for_results(False) as results:
        print("table", file=results)
        print("line")
    assert capsys.readouterr().out == "table\nline\n"
