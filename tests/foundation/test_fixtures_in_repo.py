"""The Open-Sora 1.0 reference fixtures travel with the repository (issue #14 item 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _conftest():
    """tests/conftest.py by path: `import conftest` may find another folder's conftest under xdist."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ct = _conftest()
IN_REPO_FIXTURES, REPO, fixtures_dir = _ct.IN_REPO_FIXTURES, _ct.REPO, _ct.fixtures_dir

NEEDED = [
    "iddpm.json",
    "iddpm.safetensors",
    "iddpm_sample_loop_f32.json",
    "iddpm_sample_loop_f32.safetensors",
    "iddpm_sample_loop_f64.json",
    "iddpm_sample_loop_f64.safetensors",
    "stdit_small.json",
    "stdit_small.safetensors",
    "stdit_small.weights.safetensors",
]


def test_fixtures_are_tracked_in_the_repository():
    """Every file the parity tests read is under tests/fixtures/ and tracked by git (a fresh clone has it)."""
    tracked = subprocess.run(
        ["git", "ls-files", str(IN_REPO_FIXTURES.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {Path(p).name for p in tracked}
    missing = [n for n in NEEDED if n not in names]
    assert not missing, f"not tracked under {IN_REPO_FIXTURES}: {missing}"


def test_fixtures_dir_defaults_to_the_in_repo_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("SORAKIT_FIXTURES", raising=False)
    assert fixtures_dir() == IN_REPO_FIXTURES
    monkeypatch.setenv("SORAKIT_FIXTURES", str(tmp_path))
    assert fixtures_dir() == tmp_path


def test_parity_tests_run_without_skips_on_a_clone_without_shared(tmp_path):
    """With no ../shared beside the repo and no $SORAKIT_FIXTURES, the parity tests run, none skipped."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "SORAKIT_FIXTURES"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rs",
            "tests/diffusion/test_iddpm_fixtures.py",
            "tests/models/test_stdit_parity.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "skipped" not in out.stdout, out.stdout[-3000:]
