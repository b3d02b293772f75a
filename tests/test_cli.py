"""The CLI shell: global options, one-line errors with exit code 2, a fast --help without torch."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core import __version__

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"nsarm {__version__}"


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("degrade", "caption", "upscale", "evaluate", "robustness", "models"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, (command, sub.output)


def test_library_error_is_one_red_line_with_exit_code_2(tmp_path) -> None:
    missing = tmp_path / "nothing-here"
    result = runner.invoke(app, ["upscale", str(missing), "--model", "bicubic", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "nothing-here" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path) -> None:
    result = runner.invoke(app, ["--debug", "upscale", str(tmp_path / "x.png"), "--model", "bicubic"])
    assert result.exit_code != 0
    assert result.exception is not None  # re-raised instead of being turned into one line


def test_markup_in_messages_is_printed_verbatim() -> None:
    from nsarm_core.errors import missing_extra

    def boom() -> None:
        raise missing_extra("pyiqa", "eval", "metric X")

    app.command("boom-test")(boom)
    try:
        result = runner.invoke(app, ["boom-test"])
    finally:
        app.registered_commands.pop()
    assert result.exit_code == 2
    assert "nsarm[eval]" in result.output


def test_help_starts_without_importing_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from nsarm_cli.main import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"nsarm --help imported {out.stdout.strip()}"
