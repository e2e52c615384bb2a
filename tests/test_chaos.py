"""tools/chaos.py: a tiny run killed with kill -9 twice and stopped by SIGTERM once resumes bit-identical."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_chaos_kills_and_sigterm_resume_bit_identical(tmp_path):
  # The NaN case of the tool is covered in-process by tests/test_nonfinite.py (cheaper than two more runs).
  result = subprocess.run(
    [sys.executable, "tools/chaos.py", "--kills=2", "--cases=kill,sigterm", "--steps=10", f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
  assert "chaos kill: ok" in result.stdout and "chaos sigterm: ok" in result.stdout
  assert "chaos: all 2 cases passed" in result.stdout
