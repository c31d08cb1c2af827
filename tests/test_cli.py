import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_send_py_help_runs_as_subprocess() -> None:
    out = subprocess.run(
        [sys.executable, "send.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "email course" in out.stdout


def test_bad_setting_is_one_line_error(tmp_path: Path) -> None:
    import os

    from dripmail.config import load_settings
    from dripmail.errors import ConfigError

    env = dict(os.environ, DRIPMAIL_PROVIDER="nope")
    out = subprocess.run(
        [sys.executable, "-c", "from dripmail.config import load_settings; load_settings()"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "DRIPMAIL_PROVIDER" in out.stderr
    assert load_settings(tmp_path).provider == "outbox"
    assert issubclass(ConfigError, Exception)
