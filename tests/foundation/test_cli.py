from __future__ import annotations

import subprocess
import sys

from sorakit.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sorakit.cli.main", *args], capture_output=True, text=True)


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in ("info", "config", "data"):
        assert name in proc.stdout


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sorakit ")


def test_info_runs_on_cpu():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert "torch:" in proc.stdout and "cpu" in proc.stdout
    assert "scaled_dot_product_attention" in proc.stdout


def test_user_error_is_one_line_exit_2():
    proc = run_cli("config", "no/such/preset")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("sorakit: error: unknown preset 'no/such/preset'")
    assert "Traceback" not in proc.stderr


def test_config_dump_applies_overrides(capsys):
    assert (
        main(
            ["config", "opensora/inference/16x256x256", "scheduler.num_sampling_steps=7", "--format", "json"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"num_sampling_steps": 7' in out


def test_config_takes_generate_short_preset_names(capsys):
    """`sorakit config opensora/16x256x256` (the name `generate --preset` takes) prints that preset."""
    assert main(["config", "opensora/16x256x256", "--format", "json"]) == 0
    short = capsys.readouterr().out
    assert main(["config", "opensora/inference/16x256x256", "--format", "json"]) == 0
    assert short == capsys.readouterr().out and '"num_sampling_steps"' in short
