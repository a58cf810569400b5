"""`insignia-agent helper`: usage errors exit 2 with the reason; `--once` gives up in time."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from insignia.agent.cli.main import main


def test_bad_reload_command_and_socket_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "certs")
    result = runner.invoke(main, ["helper", "--write-dir", out, "--reload-command", "nginx 'x"])
    assert result.exit_code == 2 and "invalid reload command" in result.output
    result = runner.invoke(main, ["helper", "--write-dir", out, "--socket", "tcp://1.2.3.4:5"])
    assert result.exit_code == 2 and "only unix sockets" in result.output
    result = runner.invoke(main, ["helper", "--reload-command", "true"])
    assert result.exit_code == 2 and "--write-dir" in result.output


def test_once_without_an_agent_gives_up_at_its_timeout(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "helper",
            "--write-dir",
            str(tmp_path / "certs"),
            "--socket",
            f"unix://{tmp_path}/no-agent.sock",
            "--once",
            "--timeout",
            "0.5",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "no X509-SVID written within 0.5s" in result.output
    assert not (tmp_path / "certs").exists()
