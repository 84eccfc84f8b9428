"""``ensemble instruments list`` and ``ensemble instruments check NAME``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from runtime.instruments import BUILTIN_PROFILE_DIR
from runtime.instruments_cmd import instruments_main


def run(argv: list[str], dirs: list[Path], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = instruments_main(argv, stdout=out, stderr=err, environment=env, dirs=dirs)
    return code, out.getvalue(), err.getvalue()


def make_tool(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    return tool


def test_list_shows_every_instrument_its_tool_and_source(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    make_tool(bin_dir, "claude")
    project = tmp_path / "project"
    project.mkdir()
    (project / "mine.yaml").write_text("name: mine\ncli: {command: {executable: not-there}}\n")
    (project / "cli.yaml").write_text("name: cli\ncli: {command: {executable: claude}}\n")

    code, out, _ = run(["list"], [BUILTIN_PROFILE_DIR, project], {"PATH": str(bin_dir)})

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["NAME", "KIND", "TOOL", "STATUS", "MODELS", "SOURCE"]
    assert "ready" in lines["claude-code"] and "built-in" in lines["claude-code"]
    assert "not found" in lines["mine"] and str(project / "mine.yaml") in lines["mine"]
    assert "overrides another" in lines["cli"]
    assert "endpoint" in lines["ollama"]


def test_list_as_json() -> None:
    code, out, _ = run(["list", "--json"], [BUILTIN_PROFILE_DIR], {"PATH": ""})

    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["claude-code"]["available"] is False
    assert rows["claude-code"]["models"] == 3
    assert rows["ollama"]["kind"] == "http"


def test_check_a_ready_tool_names_its_variables_without_values(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    tool = make_tool(bin_dir, "claude")
    env = {"PATH": str(bin_dir), "ANTHROPIC_API_KEY": "sk-ant-very-secret-value"}

    code, out, _ = run(["check", "claude-code"], [BUILTIN_PROFILE_DIR], env)

    assert code == 0
    assert f"executable: claude -> {tool}" in out
    assert "ANTHROPIC_API_KEY: set" in out
    assert "AWS_SECRET_ACCESS_KEY: not set" in out
    assert "sk-ant-very-secret-value" not in out
    assert "claude-sonnet-4-5: 0.003 / 0.015" in out
    assert "command: claude --dangerously-skip-permissions --output-format json -p" in out
    assert out.rstrip().endswith("ready")


def test_check_a_missing_tool_is_not_ready() -> None:
    code, out, _ = run(["check", "codex-cli", "--json"], [BUILTIN_PROFILE_DIR], {"PATH": ""})

    report = json.loads(out)
    assert code == 1
    assert report["executable_path"] is None
    assert "not on PATH" in report["problems"][0]
    assert report["environment"]["OPENAI_API_KEY"] is False


def test_check_an_http_instrument_that_does_not_answer(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "local.yaml").write_text(
        f"name: local\nkind: http\nhttp: {{base_url: 'http://127.0.0.1:{port}/v1'}}\n"
    )

    code, out, _ = run(["check", "local"], [folder], {"PATH": os.environ["PATH"]})
    offline_code, offline_out, _ = run(["check", "local", "--offline"], [folder], {})

    assert code == 1
    assert "does not answer" in out and "is the server running?" in out
    assert offline_code == 0
    assert f"endpoint: http://127.0.0.1:{port}/v1/chat/completions" in offline_out


def test_unknown_instrument_and_bad_usage() -> None:
    code, _, err = run(["check", "nope"], [BUILTIN_PROFILE_DIR], {})
    usage_code, _, _ = run(["frobnicate"], [BUILTIN_PROFILE_DIR], {})

    assert code == 2
    assert "no instrument named 'nope'" in err and "claude-code" in err
    assert usage_code == 2


def test_an_invalid_profile_is_reported_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\ncli: {command: {}}\n")

    code, _, err = run(["list"], [tmp_path], {})

    assert code == 2
    assert str(tmp_path / "bad.yaml") in err
    assert "cli.command.executable" in err
