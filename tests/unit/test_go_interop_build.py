"""The Go interop harness fails CI, and skips elsewhere, with one line naming what is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.go_interop import build


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_no_go_toolchain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"need the go toolchain \(go not found on PATH\)"):
        build(tmp_path, env={"PATH": str(tmp_path)})


def test_a_failed_module_download_fails_ci_with_go_builds_last_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the go toolchain (go not found on PATH)")
    monkeypatch.setenv("CI", "true")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOMODCACHE": str(tmp_path / "mod"),
        "GOCACHE": str(tmp_path / "cache"),
    }
    with pytest.raises(
        pytest.fail.Exception, match=r"building the Go interop client failed.*GOPROXY=off"
    ):
        build(tmp_path / "out", env=env)
