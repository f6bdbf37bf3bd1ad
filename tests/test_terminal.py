"""The job's terminal: a progress bar fed by the monitor's counts, Ray's logs in a file, --json results alone on stdout."""

from __future__ import annotations

import io
import logging
import os
import sys

from operators.failures import FailureMonitor
from pipelines.terminal import JobProgress, ray_output_to_file, stdout_for_results


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


def test_ray_output_goes_to_a_file(tmp_path, capfd):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    ray_logger = logging.getLogger("ray")
    saved = ray_logger.handlers[:], ray_logger.propagate
    try:
        with ray_output_to_file(str(tmp_path)) as (path, terminal):
            ray_logger.handlers.clear()  # what ray.init(configure_logging=False) does
            ray_logger.propagate = False
            ray_logger.warning("token notice")  # logging's last resort: stderr
            print("(raylet) node died", file=sys.stderr)
            os.write(2, b"core_worker.cc: constructor arguments\n")  # native code, fd 2
            print("assets 3/5", file=terminal)
            assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
        print("after", file=sys.stderr)
        log = path.read_text()
        assert path.parent == tmp_path
        assert all(m in log for m in ("token notice", "(raylet) node died", "core_worker.cc"))
        assert "assets" not in log and "after" not in log
        assert capfd.readouterr().err == "assets 3/5\nafter\n"
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = before
        ray_logger.handlers[:], ray_logger.propagate = saved


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


def test_the_default_log_folder_is_private_and_names_are_unique(monkeypatch, tmp_path):
    import os
    import stat
    import tempfile

    from pipelines.terminal import log_file

    monkeypatch.delenv("RESULIC_LOG_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a, b = log_file(".log"), log_file(".log")
    assert a != b and a.exists() and a.parent == tmp_path / f"resulic-logs-{os.getuid()}"
    assert stat.S_IMODE(a.parent.stat().st_mode) & 0o077 == 0 and stat.S_IMODE(a.stat().st_mode) & 0o077 == 0
    os.chmod(a.parent, 0o777)  # opened to others (or made by someone else): not used
    c = log_file(".log")
    assert c.parent != a.parent and c.parent.name.startswith("resulic-logs-")
