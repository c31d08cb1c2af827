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


def test_a_command_outside_a_project_refuses_and_creates_nothing(tmp_path: Path) -> None:
    """`status` in the wrong folder (or a mistyped --root) made an empty database there and
    said "no subscribers yet"."""
    import os

    from tests.cli_in_process import run_cli

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    for args in (("status",), ("subscribers", "list"), ("run",)):
        out = run_cli(tmp_path, *args, env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stderr == (
            f"error: this folder is not a dripmail project (no course/course.toml in "
            f"{tmp_path.resolve()}): cd to your project or give --root PATH; "
            "`python send.py init DIR` makes one\n"
        )
    assert list(tmp_path.iterdir()) == []
    typo = tmp_path / "studoi"
    out = run_cli(typo, "status", env=env, cwd=tmp_path)
    assert out.returncode == 1 and f"{typo} is not a dripmail project" in out.stderr
    assert not typo.exists()
