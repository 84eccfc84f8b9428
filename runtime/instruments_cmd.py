"""``ensemble instruments list`` and ``ensemble instruments check NAME``.

Owns the two commands that show which instruments this machine has: every
profile with where it came from and whether its tool is there, and for one
instrument, its executable on PATH (or its endpoint answering), which of its
credential variables are set (never their values), its models and prices, and
the command line it runs. Loading and the profile format are
``runtime.instruments``; this module only reads and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from runtime.errors import ProfileError
from runtime.instruments import (
    BASE_ENVIRONMENT,
    BUILTIN_PROFILE_DIR,
    FoundProfile,
    InstrumentProfile,
    build_command,
    find_profiles,
    profile_dirs,
)

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_USAGE = 2

_PROBE_TIMEOUT_SECONDS = 3.0


def instruments_main(
    argv: Sequence[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environment: Mapping[str, str] | None = None,
    dirs: Sequence[Path] | None = None,
) -> int:
    """Run ``ensemble instruments ARGV``; returns the exit code.

    0: done (``check``: the instrument is ready), 1: ``check`` found it not
    ready, 2: bad usage, an unknown instrument or an invalid profile.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if environment is None else environment
    parser = argparse.ArgumentParser(
        prog="ensemble instruments", description="Show the instruments Ensemble can play."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    list_cmd = commands.add_parser("list", help="every instrument and whether its tool is there")
    list_cmd.add_argument("--json", action="store_true", help="one JSON document")
    check_cmd = commands.add_parser("check", help="what one instrument needs and has")
    check_cmd.add_argument("name")
    check_cmd.add_argument("--json", action="store_true", help="one JSON document")
    check_cmd.add_argument(
        "--offline", action="store_true", help="do not contact an HTTP instrument's endpoint"
    )
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        found = find_profiles(dirs if dirs is not None else profile_dirs())
    except ProfileError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if args.command == "list":
        return _list(found, env, out, as_json=args.json)
    return _check(found, args.name, env, out, err, as_json=args.json, offline=args.offline)


# --- list ------------------------------------------------------------------------------


def _list(
    found: Sequence[FoundProfile], env: Mapping[str, str], out: TextIO, *, as_json: bool
) -> int:
    effective = _effective(found)
    rows: list[dict[str, Any]] = []
    for name in sorted(effective):
        item = effective[name]
        profile = item.profile
        rows.append(
            {
                "name": name,
                "kind": profile.kind,
                "target": _target(profile),
                "available": _available(profile, env),
                "models": len(profile.models),
                "source": _source(item),
                "overrides": [_source(other) for other in found if other.profile.name == name][:-1],
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return EXIT_OK
    headers = ("NAME", "KIND", "TOOL", "STATUS", "MODELS", "SOURCE")
    table = [
        (
            row["name"],
            row["kind"],
            row["target"],
            _status_word(row["available"], row["kind"]),
            str(row["models"]),
            row["source"] + (" (overrides another)" if row["overrides"] else ""),
        )
        for row in rows
    ]
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *table, strict=False)
    ]
    for line in (headers, *table):
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip(),
            file=out,
        )
    return EXIT_OK


def _status_word(available: bool | None, kind: str) -> str:
    if available is None:
        return "endpoint" if kind == "http" else "?"
    return "ready" if available else "not found"


# --- check -----------------------------------------------------------------------------


def _check(
    found: Sequence[FoundProfile],
    name: str,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool,
    offline: bool,
) -> int:
    effective = _effective(found)
    item = effective.get(name)
    if item is None:
        known = ", ".join(sorted(effective)) or "none"
        print(
            f"error: no instrument named {name!r} (known: {known}); add a profile in "
            f"~/.ensemble/instruments/ or ./.ensemble/instruments/",
            file=err,
        )
        return EXIT_USAGE
    profile = item.profile
    report: dict[str, Any] = {
        "name": profile.name,
        "display_name": profile.display_name,
        "kind": profile.kind,
        "source": _source(item),
        "environment": {variable: variable in env for variable in profile.required_env},
        "always_passed": list(BASE_ENVIRONMENT),
        "default_model": profile.default_model,
        "models": [model.model_dump() for model in profile.models],
        "problems": [],
    }
    problems: list[str] = report["problems"]
    if profile.cli is not None:
        executable = profile.cli.command.executable
        located = shutil.which(executable, path=env.get("PATH", ""))
        report["executable"] = executable
        report["executable_path"] = located
        report["command"] = list(
            build_command(profile, "PROMPT", workspace="WORKSPACE", timeout_seconds=1800).argv
        )
        report["prompt_on_stdin"] = profile.cli.command.prompt_via_stdin
        if located is None:
            problems.append(
                f"executable {executable!r} is not on PATH: install it, or override the "
                f"profile with the full path in ./.ensemble/instruments/{profile.name}.yaml"
            )
    if profile.http is not None:
        report["endpoint"] = profile.http.chat_url
        if profile.http.api_key_env and profile.http.api_key_env not in env:
            problems.append(f"{profile.http.api_key_env} is not set: the endpoint needs a key")
        if not offline:
            reachable, detail, served = _probe(profile, env)
            report["reachable"] = reachable
            report["served_models"] = served
            if not reachable:
                problems.append(detail)
    if as_json:
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_check(report, profile, out)
    return EXIT_OK if not problems else EXIT_NOT_READY


def _print_check(report: Mapping[str, Any], profile: InstrumentProfile, out: TextIO) -> None:
    title = report["name"] + (f" ({report['display_name']})" if report["display_name"] else "")
    print(f"{title}: {report['kind']} instrument from {report['source']}", file=out)
    if "executable" in report:
        where = report["executable_path"] or "NOT FOUND on PATH"
        print(f"  executable: {report['executable']} -> {where}", file=out)
        stdin_note = " (prompt on stdin)" if report["prompt_on_stdin"] else ""
        print(f"  command: {' '.join(report['command'])}{stdin_note}", file=out)
    if "endpoint" in report:
        print(f"  endpoint: {report['endpoint']}", file=out)
        if "reachable" in report:
            state = "answers" if report["reachable"] else "does not answer"
            print(f"  endpoint {state}", file=out)
            if report["served_models"]:
                print(f"  served models: {', '.join(report['served_models'])}", file=out)
    print(f"  always passed: {', '.join(report['always_passed'])}", file=out)
    if report["environment"]:
        print("  credential variables (only these reach the tool besides the above):", file=out)
        for variable, present in report["environment"].items():
            print(f"    {variable}: {'set' if present else 'not set'}", file=out)
    else:
        print("  credential variables: none", file=out)
    print(f"  default model: {profile.default_model or '(the tool decides)'}", file=out)
    if profile.models:
        print("  models (USD per 1k tokens in / out):", file=out)
        for model in profile.models:
            limit = f", at most {model.max_concurrent} at once" if model.max_concurrent else ""
            print(
                f"    {model.name}: {model.cost_per_1k_input:g} / {model.cost_per_1k_output:g}"
                f"{limit}",
                file=out,
            )
    else:
        print("  models: none listed (cost is 0 unless the tool reports it)", file=out)
    problems = report["problems"]
    if problems:
        for problem in problems:
            print(f"  problem: {problem}", file=out)
        print("not ready", file=out)
    else:
        print("ready", file=out)


def _probe(profile: InstrumentProfile, env: Mapping[str, str]) -> tuple[bool, str, list[str]]:
    """Ask an OpenAI-compatible endpoint for its models (GET {base_url}/models)."""
    assert profile.http is not None
    url = profile.http.base_url.rstrip("/") + "/models"
    headers = dict(profile.http.headers)
    if profile.http.api_key_env and env.get(profile.http.api_key_env):
        headers["Authorization"] = f"Bearer {env[profile.http.api_key_env]}"
    try:
        probe = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(probe, timeout=_PROBE_TIMEOUT_SECONDS) as response:
            document = json.loads(response.read(4 * 1024 * 1024) or b"null")
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}", []
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} does not answer ({reason}); is the server running?", []
    served: list[str] = []
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        served = [
            str(entry["id"])
            for entry in document["data"]
            if isinstance(entry, Mapping) and "id" in entry
        ]
    return True, "", served


# --- helpers ---------------------------------------------------------------------------


def _effective(found: Sequence[FoundProfile]) -> dict[str, FoundProfile]:
    return {item.profile.name: item for item in found}


def _source(item: FoundProfile) -> str:
    if item.source is None:
        return "given"
    if item.source.parent == BUILTIN_PROFILE_DIR:
        return "built-in"
    return str(item.source)


def _target(profile: InstrumentProfile) -> str:
    if profile.cli is not None:
        return profile.cli.command.executable
    if profile.http is not None:
        return profile.http.base_url
    return "?"


def _available(profile: InstrumentProfile, env: Mapping[str, str]) -> bool | None:
    if profile.cli is not None:
        return shutil.which(profile.cli.command.executable, path=env.get("PATH", "")) is not None
    return None


__all__ = ["instruments_main"]
