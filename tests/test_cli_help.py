"""What a user finds at the command line: help with every default, --version, python -m vidgen,
--quiet silencing the libraries too, and speedups measured warm, in alternating order, with their spread."""
import argparse
import importlib
import subprocess
import sys

import pytest

import vidgen
from vidgen import _timing, cli
from vidgen.commands import _args


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(cli.COMMANDS[command][0]).build_parser()


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_states_its_default_and_help_has_no_markup(command, capsys):
    parser = parser_of(command)
    formatter = parser._get_formatter()
    for action in parser._actions:
        plain_flag = isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))
        if plain_flag or action.required:
            continue
        assert action.help, f"{command} {action.dest}: no help"
        assert "default" in formatter._get_help_string(action), f"{command} {action.option_strings}: no default"
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"vidgen {command}" in text and "``" not in text and ":func:" not in text


def test_a_numeric_default_of_zero_is_shown():
    """0 == False in Python: the formatter must still show ``--seed``'s default."""
    parser = parser_of("sample")
    seed = next(a for a in parser._actions if a.dest == "seed")
    assert parser._get_formatter()._get_help_string(seed).endswith("(default: %(default)s)")
    assert "(default: 0)" in parser.format_help()


def test_version_and_top_level_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vidgen {vidgen.__version__}"
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--version" in text and all(name in text for name in cli.COMMANDS)


def test_python_dash_m_vidgen_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "vidgen", "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vidgen {vidgen.__version__}"


def test_quiet_silences_diffusers_and_transformers_and_restores_them():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    before = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    with _args.quiet_libraries(True):
        for lib in libraries:
            assert lib.get_verbosity() == lib.ERROR and not lib.is_progress_bar_enabled()
    assert [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries] == before
    with _args.quiet_libraries(False):
        assert [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries] == before


def test_sample_quiet_loads_the_model_with_the_libraries_silenced(monkeypatch, tmp_path):
    from diffusers.utils import logging as diffusers_logging

    from vidgen import default_model
    from vidgen.commands import sample as sample_command

    seen = []

    def fake_run(args, model_dir, device, dtype):  # where the model would load
        seen.append(diffusers_logging.is_progress_bar_enabled())
        raise ValueError("model: stop here")

    monkeypatch.setattr(default_model, "ensure", lambda arch: str(tmp_path))
    monkeypatch.setattr(sample_command, "_sample_video_model", fake_run)
    bars = diffusers_logging.is_progress_bar_enabled()
    assert sample_command.main(["--quiet", "--device", "cpu", "--out", str(tmp_path / "v.gif")]) == 2
    assert sample_command.main(["--device", "cpu", "--out", str(tmp_path / "v.gif")]) == 2
    assert seen == [False, bars]


def test_eval_quiet_silences_the_libraries_while_it_loads(monkeypatch, tmp_path):
    from diffusers.utils import logging as diffusers_logging

    from vidgen.commands import eval as eval_command

    seen = []

    def fake_parity(args):  # where the models would load
        seen.append(diffusers_logging.is_progress_bar_enabled())
        return 0

    monkeypatch.setattr(eval_command, "_parity", fake_parity)
    bars = diffusers_logging.is_progress_bar_enabled()
    assert eval_command.main(["--parity", "--quiet", "--out", str(tmp_path)]) == 0
    assert eval_command.main(["--parity", "--out", str(tmp_path)]) == 0
    assert seen == [False, bars]


# ----------------------------------------------------------------------------------------------
# Speedup measurement
# ----------------------------------------------------------------------------------------------
class ScriptedRuns:
    """Two fake sides whose calls advance a fake clock by scripted amounts, logging the call order."""

    def __init__(self, reference_costs, candidate_costs):
        self.now, self.calls = 0.0, []
        self.costs = {"reference": iter(reference_costs), "candidate": iter(candidate_costs)}

    def side(self, name):
        def run():
            self.calls.append(name)
            self.now += next(self.costs[name])
            return f"{name} result {len(self.calls)}"
        return run

    def clock(self):
        return self.now


def test_compare_warms_both_up_alternates_the_order_and_reports_median_and_range():
    # The first (cold) call of each side is slow; a timing of it would say 0.78x.
    runs = ScriptedRuns(reference_costs=[9.0, 2.0, 2.0, 3.0], candidate_costs=[7.0, 1.0, 2.0, 1.0])
    result = _timing.compare(runs.side("reference"), runs.side("candidate"), rounds=3,
                             seconds=_timing.wall_clock(clock=runs.clock))
    assert runs.calls == ["candidate", "reference",  # warm-up, untimed
                          "candidate", "reference", "reference", "candidate", "candidate", "reference"]
    assert result.reference_seconds == [2.0, 2.0, 3.0] and result.candidate_seconds == [1.0, 2.0, 1.0]
    assert result.ratios == [2.0, 1.0, 3.0]
    assert result.speedup == 2.0 and result.spread == (1.0, 3.0)
    assert result.reference_result == "reference result 8" and result.candidate_result == "candidate result 7"
    assert "2.00x (median of 3 alternating rounds after a warm-up of both, range 1.00x-3.00x)" == result.summary()


def test_compare_synchronises_around_each_timed_call_and_refuses_no_rounds():
    events = []
    seconds = _timing.wall_clock(clock=lambda: len(events), synchronize=lambda: events.append("sync"))
    _timing.compare(lambda: events.append("ref"), lambda: events.append("cand"), rounds=1, warmup=0, seconds=seconds)
    assert events == ["sync", "cand", "sync", "sync", "ref", "sync"]
    with pytest.raises(ValueError, match="rounds"):
        _timing.compare(lambda: None, lambda: None, rounds=0)


def fake_times(**seconds):
    class Times:
        pass
    times = Times()
    times.seconds = seconds
    return times


def test_sample_table_reports_the_rounds_median_and_says_a_cpu_does_not_predict_a_gpu(capsys):
    from vidgen.commands.sample import print_comparison

    tables = {"vidgen": [fake_times(denoising=1.0), fake_times(denoising=3.0), fake_times(denoising=2.0)],
              "reference": [fake_times(denoising=4.0), fake_times(denoising=4.0), fake_times(denoising=6.0)]}
    comparison = _timing.Comparison(reference_seconds=[4.0, 4.0, 6.0], candidate_seconds=[1.0, 3.0, 2.0])
    print_comparison(tables, comparison, "cpu")
    text = capsys.readouterr().out
    assert "denoising" in text and "2.000" in text and "4.000" in text  # per-stage medians
    assert "3.00x (median of 3 alternating rounds" in text and "range 1.33x-4.00x" in text
    assert _timing.CPU_CAVEAT in text
    print_comparison(tables, comparison, "cuda")
    assert _timing.CPU_CAVEAT not in capsys.readouterr().out


def test_parity_table_and_cli_show_the_range_and_the_cpu_caveat(monkeypatch, tmp_path, capsys):
    import vidgen.parity
    from vidgen.commands import eval as eval_command

    row = {"kind": "tune-a-video", "min_psnr": 80.0, "max_abs_diff": 1e-6, "default_seconds": 2.0,
           "vidgen_seconds": 1.0, "speedup": 2.0, "speedup_range": [1.5, 2.5], "rounds": 3}
    asked = {}

    def fake_report(model_dir, **kwargs):
        asked.update(kwargs)
        return [row]

    monkeypatch.setattr(vidgen.parity, "parity_report", fake_report)
    assert eval_command.main(["--parity", "--model", _model_folder(tmp_path), "--rounds", "5",
                              "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert asked["rounds"] == 5
    assert "2.00x" in text and "1.50-2.50x" in text and _timing.CPU_CAVEAT in text


def _model_folder(tmp_path) -> str:
    """The layout of a diffusers SD folder (configs only): passes the CLI's up-front check."""
    for sub, config in _args.SD_CONFIGS.items():
        (tmp_path / "model" / sub).mkdir(parents=True)
        if config:
            (tmp_path / "model" / sub / config).write_text("{}")
    return str(tmp_path / "model")
