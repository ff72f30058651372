"""The one-line error report shared by the console scripts, the debug switch, and the run lock."""

from __future__ import annotations

import pytest

from sdpo_lightning.data.records import DataFormatError
from sdpo_lightning.errors import ConfigError, UserError, report, run_main, strip_debug_flag
from sdpo_lightning.runtime.run_lock import RunLock, is_secondary_rank


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv("SDPO_DEBUG", "0")  # restored (unset) afterwards, also after --debug set it


def test_data_errors_are_user_errors_and_stay_value_errors():
    err = DataFormatError("a.json", "record 3", "empty history")
    assert isinstance(err, UserError) and isinstance(err, ValueError)
    assert isinstance(ConfigError("x"), ValueError)


def test_report_prints_one_line_and_the_traceback_only_in_debug(capsys, monkeypatch):
    try:
        raise ConfigError("bad\n  value")
    except ConfigError as err:
        assert report("sdpo", err) == 2
        assert capsys.readouterr().err == "sdpo: error: bad value\n"
        monkeypatch.setenv("SDPO_DEBUG", "1")
        report("sdpo", err)
    err_text = capsys.readouterr().err
    assert err_text.startswith("Traceback") and err_text.endswith("sdpo: error: bad value\n")


def test_debug_flag_is_stripped_and_turns_debug_on(monkeypatch):
    import os

    assert (
        strip_debug_flag(["fit", "-c", "x.yaml"]) == ["fit", "-c", "x.yaml"]
        and os.environ["SDPO_DEBUG"] == "0"
    )
    assert strip_debug_flag(["fit", "--debug", "-c", "x.yaml"]) == ["fit", "-c", "x.yaml"]
    assert os.environ["SDPO_DEBUG"] == "1"


def test_run_main_reports_known_errors_and_lets_bugs_through(capsys):
    def bad(argv):
        raise DataFormatError("d.json", None, "no valid records")

    assert run_main("prog", bad, []) == 2
    assert capsys.readouterr().err == "prog: error: d.json: no valid records\n"
    with pytest.raises(ZeroDivisionError):
        run_main("prog", lambda argv: 1 / 0, [])


def test_run_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    import os

    with RunLock(tmp_path / "root"):
        assert (tmp_path / "root" / ".sdpo.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match=rf"is in use by another run \(pid {os.getpid()}\)"):
            RunLock(tmp_path / "root").acquire()
    with RunLock(tmp_path / "root"):  # released: taken again
        pass


def test_secondary_ranks_are_recognised(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert not is_secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not is_secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert is_secondary_rank()


# ------------------------------------------------------------ the other console scripts
def test_sdpo_report_bad_summary_one_line_then_traceback_with_debug(tmp_path, capsys):
    from sdpo_lightning.evaluation.report import main

    bad = tmp_path / "summary.json"
    bad.write_text('{"run": ')
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdpo-report: error: {bad}: malformed JSON") and err.count("\n") == 1
    assert main([str(bad), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("sdpo-report: error: ")


def test_sdpo_plots_missing_run_dir_with_debug(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from sdpo_lightning.analysis.cli import main

    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"sdpo-plots: error: run directory does not exist: {tmp_path / 'none'}\n"
    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_sdpo_prepare_missing_raw_dir_with_debug(tmp_path, capsys):
    from sdpo_lightning.data.prepare.cli import main

    args = ["movielens-100k", "--raw", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("sdpo-prepare: error: ") and "does not exist" in err and err.count("\n") == 1
    )
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
