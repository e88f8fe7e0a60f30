"""Warnings never break the one-line promise: library chatter is dropped, ours come as one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    prog = textwrap.dedent("""
        import warnings
        from scrubber.cli import install_warning_format
        install_warning_format()
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)


def test_a_runtime_warning_is_one_line_without_source():
    proc = _run('warnings.warn("CG met negative curvature at iteration 3\\nsecond line", RuntimeWarning)')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: CG met negative curvature at iteration 3\n"


def test_library_user_and_future_warnings_are_silent():
    proc = _run('warnings.warn("`foo` is deprecated", FutureWarning)\n'
                'warnings.warn("generation flags are not valid", UserWarning)')
    assert proc.returncode == 0 and proc.stderr == ""


def test_version_flag_prints_one_line():
    proc = subprocess.run([sys.executable, "-m", "scrubber.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("scrubber ") and proc.stdout.count("\n") == 1 and proc.stderr == ""
