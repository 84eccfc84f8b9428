"""Instrument profiles: loading, overriding, validation, command lines and the
environment allow-list (SCORE_FORMAT.md "Instrument profiles")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import captured_logs

from runtime.errors import ProfileError
from runtime.instruments import (
    BASE_ENVIRONMENT,
    BUILTIN_PROFILE_DIR,
    build_command,
    build_environment,
    builtin_profiles,
    find_profiles,
    load_profiles,
    profile_dirs,
    profile_from_mapping,
    secret_values,
)

MARIANNE_INSTRUMENTS = Path(__file__).parents[1].parent / "shared" / "marianne" / "instruments"

BUILTIN_NAMES = {"cli", "claude-code", "gemini-cli", "codex-cli", "aider", "goose", "ollama"}


def cli_profile(**command: Any) -> Any:
    return profile_from_mapping(
        {"name": "tool", "cli": {"command": {"executable": "tool", **command}}}
    )


def write(folder: Path, file_name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(text)
    return path


# --- loading -----------------------------------------------------------------------


def test_builtin_profiles_are_shipped_and_valid() -> None:
    profiles = builtin_profiles()

    assert profiles.keys() >= BUILTIN_NAMES
    assert profiles["ollama"].kind == "http"
    assert profiles["cli"].raw_prompt is True
    for name in BUILTIN_NAMES - {"ollama"}:
        assert profiles[name].cli is not None, name


@pytest.mark.skipif(not MARIANNE_INSTRUMENTS.is_dir(), reason="../shared/marianne is not here")
def test_all_marianne_profiles_load_unchanged() -> None:
    files = sorted(MARIANNE_INSTRUMENTS.glob("*.yaml"))

    profiles = load_profiles([MARIANNE_INSTRUMENTS])

    assert len(files) == 9
    assert len(profiles) == 9
    claude = profiles["claude-code"]
    assert claude.cli is not None
    assert claude.cli.command.prompt_via_stdin is True
    assert claude.cli.output.input_tokens_path == "usage.input_tokens"
    assert claude.model("claude-opus-4-6") is not None
    gemini = profiles["gemini-cli"]
    assert gemini.cli is not None and gemini.cli.output.aggregate_tokens is True
    for profile in profiles.values():
        command = build_command(profile, "the prompt", model="m", workspace="/w")
        assert command.argv[0] == profile.cli.command.executable  # type: ignore[union-attr]
        assert "the prompt" in command.argv or command.stdin == b"the prompt"


def test_later_folders_override_earlier_ones_by_name(tmp_path: Path) -> None:
    user, project = tmp_path / "user", tmp_path / "project"
    write(user, "mine.yaml", "name: cli\ncli: {command: {executable: zsh, prompt_flag: -c}}\n")
    write(user, "extra.yml", "name: extra\ncli: {command: {executable: extra}}\n")
    write(project, "x.yaml", "name: extra\ncli: {command: {executable: extra2}}\n")

    profiles = load_profiles([BUILTIN_PROFILE_DIR, user, tmp_path / "missing", project])

    assert profiles["cli"].cli is not None
    assert profiles["cli"].cli.command.executable == "zsh"
    assert profiles["extra"].cli is not None
    assert profiles["extra"].cli.command.executable == "extra2"
    assert "claude-code" in profiles


def test_default_folders_are_builtin_then_home_then_project(tmp_path: Path) -> None:
    dirs = profile_dirs(cwd=tmp_path)

    assert dirs[0] == BUILTIN_PROFILE_DIR
    assert dirs[1] == Path("~/.ensemble/instruments").expanduser()
    assert dirs[2] == tmp_path / ".ensemble" / "instruments"


def test_one_name_twice_in_one_folder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: twin\ncli: {command: {executable: a}}\n")
    write(tmp_path, "b.yaml", "name: twin\ncli: {command: {executable: b}}\n")

    with pytest.raises(ProfileError, match="'twin' is also defined in") as caught:
        find_profiles([tmp_path])

    assert caught.value.source == str(tmp_path / "b.yaml")


@pytest.mark.parametrize(
    ("text", "key_path", "message"),
    [
        (
            "name: x\ncli: {command: {executable: x, promt_flag: -p}}\n",
            "cli.command.promt_flag",
            "unknown key",
        ),
        ("name: x\nkind: cli\n", None, "needs a 'cli' section"),
        ("name: x\nkind: http\n", None, "needs an 'http' section"),
        ("name: 'bad name'\ncli: {command: {executable: x}}\n", "name", "should match"),
        (
            "name: x\ncli: {command: {executable: x}, errors: {rate_limit_patterns: ['(']}}\n",
            "cli.errors.rate_limit_patterns",
            "invalid regular expression",
        ),
        (
            "name: x\ncli: {command: {executable: x, required_env: ['A-B']}}\n",
            "cli.command.required_env",
            "not an environment variable name",
        ),
        (
            "name: x\nmodels: [{name: m}, {name: m}]\ncli: {command: {executable: x}}\n",
            None,
            "model listed twice: m",
        ),
        (
            "name: x\ncli: {command: {executable: x}, output: {format: xml}}\n",
            "cli.output.format",
            "'text', 'json' or 'jsonl'",
        ),
    ],
)
def test_invalid_profiles_name_the_file_and_the_key(
    tmp_path: Path, text: str, key_path: str | None, message: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)

    with pytest.raises(ProfileError, match=message) as caught:
        load_profiles([tmp_path])

    assert caught.value.source == str(path)
    assert caught.value.key_path == key_path


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "name: x\ncli: [unclosed\n")

    with pytest.raises(ProfileError, match="invalid YAML") as caught:
        load_profiles([tmp_path])

    assert caught.value.line is not None


def test_a_misspelt_key_names_its_line_and_the_key_it_may_mean(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        "name: x\nkind: cli\ncli:\n  command:\n    executable: x\n    promt_flag: -p\n",
    )

    with pytest.raises(ProfileError) as caught:
        load_profiles([tmp_path])

    assert (caught.value.source, caught.value.line) == (str(path), 6)
    assert caught.value.key_path == "cli.command.promt_flag"
    assert caught.value.message == "unknown key 'promt_flag'; did you mean 'prompt_flag'?"
    assert str(caught.value).startswith(f"{path}:6: cli.command.promt_flag: unknown key")


def test_a_repeated_key_in_a_profile_is_warned_about_and_the_last_wins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "twice.yaml",
        "name: x\ncli:\n  command:\n    executable: first\n    executable: second\n",
    )

    with captured_logs("WARNING") as warnings:
        profiles = load_profiles([tmp_path])

    assert profiles["x"].cli is not None and profiles["x"].cli.command.executable == "second"
    assert any(
        "cli.command.executable: key appears more than once (line 5)" in line for line in warnings
    )


def test_a_profile_that_expands_through_aliases_is_refused(tmp_path: Path) -> None:
    lines = ["name: x", "cli: {command: {executable: x}}", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]")
    write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")

    with pytest.raises(ProfileError, match="through YAML aliases"):
        load_profiles([tmp_path])


def test_a_profile_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "list.yaml", "- a\n- b\n")

    with pytest.raises(ProfileError, match="must be a YAML mapping"):
        load_profiles([tmp_path])


def test_model_lookup_uses_the_default_model() -> None:
    profile = profile_from_mapping(
        {
            "name": "t",
            "default_model": "big",
            "models": [{"name": "small"}, {"name": "big", "cost_per_1k_input": 1.0}],
            "cli": {"command": {"executable": "t"}},
        }
    )

    assert profile.model(None) is not None and profile.model(None).name == "big"  # type: ignore[union-attr]
    assert profile.model("small") is not None
    assert profile.model("other") is None


def test_S22_model_limits_come_from_the_profile() -> None:
    profile = profile_from_mapping(
        {
            "name": "t",
            "default_model": "big",
            "models": [
                {"name": "big", "max_concurrent": 2},
                {"name": "small", "max_concurrent": 8},
                {"name": "free"},
            ],
            "cli": {"command": {"executable": "t"}},
        }
    )

    # A sheet naming no model counts against "big" in the pool's lease table.
    assert profile.model_limits == {"big": 2, "small": 8}
    assert builtin_profiles()["cli"].model_limits == {}


# --- command lines --------------------------------------------------------------------


def test_prompt_as_a_flag_with_model_format_and_extra_flags() -> None:
    profile = cli_profile(
        subcommand="run",
        prompt_flag="--message",
        model_flag="--model",
        auto_approve_flag="--yes",
        output_format_flag="--format",
        output_format_value="json",
        extra_flags=["--quiet"],
    )

    command = build_command(profile, "do it", model="m1")

    assert command.argv == (
        "tool",
        "run",
        "--model",
        "m1",
        "--yes",
        "--format",
        "json",
        "--quiet",
        "--message",
        "do it",
    )
    assert command.stdin is None


def test_positional_prompt_and_a_format_switch_without_value() -> None:
    profile = cli_profile(output_format_flag="--json")

    command = build_command(profile, "hello")

    assert command.argv == ("tool", "--json", "hello")


def test_prompt_on_stdin_with_flag_and_sentinel() -> None:
    profile = cli_profile(prompt_flag="-i", prompt_via_stdin=True, stdin_sentinel="-")

    command = build_command(profile, "a very long prompt")

    assert command.argv == ("tool", "-i", "-")
    assert command.stdin == b"a very long prompt"


def test_prompt_on_stdin_with_a_bare_sentinel_or_nothing() -> None:
    sentinel_only = cli_profile(prompt_via_stdin=True, stdin_sentinel="-")
    nothing = cli_profile(prompt_via_stdin=True)

    assert build_command(sentinel_only, "p").argv == ("tool", "-")
    assert build_command(nothing, "p").argv == ("tool",)
    assert build_command(nothing, "é").stdin == "é".encode()


def test_default_model_is_used_when_the_request_has_none() -> None:
    profile = profile_from_mapping(
        {
            "name": "t",
            "default_model": "d",
            "cli": {"command": {"executable": "t", "model_flag": "-m"}},
        }
    )

    assert build_command(profile, "p").argv == ("t", "-m", "d", "p")
    assert build_command(profile, "p", model="x").argv == ("t", "-m", "x", "p")


def test_no_model_flag_without_a_model() -> None:
    assert build_command(cli_profile(model_flag="-m"), "p").argv == ("tool", "p")


def test_workspace_timeout_mcp_and_auto_approve_off() -> None:
    profile = cli_profile(
        auto_approve_flag="--yolo",
        working_dir_flag="--cwd",
        timeout_flag="--timeout",
        mcp_disable_args=["--strict-mcp-config"],
    )

    command = build_command(profile, "p", workspace="/w", timeout_seconds=90.7, auto_approve=False)

    assert command.argv == ("tool", "--strict-mcp-config", "--cwd", "/w", "--timeout", "90", "p")


def test_builtin_claude_code_reads_the_prompt_from_stdin_as_json() -> None:
    claude = builtin_profiles()["claude-code"]

    command = build_command(claude, "write tests", model="claude-sonnet-4-5")

    assert command.argv == (
        "claude",
        "--model",
        "claude-sonnet-4-5",
        "--dangerously-skip-permissions",
        "--output-format",
        "json",
        "-p",
    )
    assert command.stdin == b"write tests"


def test_builtin_cli_runs_bash_c() -> None:
    assert build_command(builtin_profiles()["cli"], "echo hi").argv == ("bash", "-c", "echo hi")


def test_building_a_command_for_an_http_profile_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a CLI instrument"):
        build_command(builtin_profiles()["ollama"], "p")


# --- environment ------------------------------------------------------------------------


def test_environment_is_the_allow_list_only() -> None:
    profile = cli_profile(required_env=["TOOL_API_KEY", "TOOL_REGION"])
    host = {
        "PATH": "/bin",
        "HOME": "/home/u",
        "TOOL_API_KEY": "k" * 20,
        "OTHER_API_KEY": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "PYTHONPATH": "/x",
    }

    environment = build_environment(
        profile, host, pass_env=["PYTHONPATH"], extra={"ENSEMBLE_SHEET_NUM": "3"}
    )

    assert environment == {
        "PATH": "/bin",
        "HOME": "/home/u",
        "TOOL_API_KEY": "k" * 20,
        "PYTHONPATH": "/x",
        "ENSEMBLE_SHEET_NUM": "3",
    }
    assert set(BASE_ENVIRONMENT) >= {"PATH", "HOME"}


def test_secret_values_are_the_credentials_that_are_set() -> None:
    profile = cli_profile(required_env=["A_KEY", "B_KEY", "C_KEY"])

    secrets = secret_values(profile, {"A_KEY": "long-enough-secret", "B_KEY": "short"})

    assert secrets == ["long-enough-secret"]


def test_settings_passed_through_required_env_are_not_secrets() -> None:
    profile = cli_profile(
        required_env=[
            "ANTHROPIC_MODEL",
            "CLOUD_ML_REGION",
            "ANTHROPIC_AUTH_TOKEN",
            "GEMINI_API_KEY",
        ]
    )
    host = {
        "ANTHROPIC_MODEL": "claude-sonnet-4-5",
        "CLOUD_ML_REGION": "us-east5-region",
        "ANTHROPIC_AUTH_TOKEN": "token-value-123",
        "GEMINI_API_KEY": "key-value-12345",
    }

    assert secret_values(profile, host) == ["token-value-123", "key-value-12345"]
