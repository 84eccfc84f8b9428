#!/usr/bin/env python3
"""A stand-in for an AI agent CLI, for Ensemble's instrument tests.

Takes its prompt the way the test's profile gives it: on stdin after `-p`
(Claude-style), after `--message` (Aider-style) or as the last argument.
Prints one JSON object with `--output-format json`, plain text otherwise. The
first word of the prompt's first line that starts with one picks the behaviour:

  answer TEXT       the answer TEXT, with usage 1200 input / 300 output tokens
  cost TEXT         the same, plus a reported total_cost_usd of 0.25
  env               the answer is its environment, as JSON
  argv              the answer is its arguments, as JSON
  ratelimit-ok      a rate-limit message, plain text on stdout, exit 0
  ratelimit-fail    a usage-limit message with a reset time on stdout, exit 1
  auth              an invalid-key message on stderr, exit 1
  overloaded        a JSON error object "Overloaded" on stdout, exit 1
  is-error          a JSON result with is_error true, exit 0
  hang FILE         starts a child, writes "PID CHILD_PID" to FILE, sleeps forever
  stubborn FILE     the same, but ignores SIGTERM (so does its child)
  flood MIB         MIB mebibytes on stdout, then "END", exit 0
  badutf8           invalid UTF-8 on both streams, exit 0
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

MODES = {
    "answer",
    "cost",
    "env",
    "argv",
    "ratelimit-ok",
    "ratelimit-fail",
    "auth",
    "overloaded",
    "is-error",
    "hang",
    "stubborn",
    "flood",
    "badutf8",
}


def option(args: list[str], name: str) -> str | None:
    if name in args:
        index = args.index(name)
        if index + 1 < len(args):
            return args[index + 1]
    return None


def main() -> int:
    args = sys.argv[1:]
    json_mode = option(args, "--output-format") == "json"
    if "-p" in args:
        prompt = sys.stdin.read()
    elif "--message" in args:
        prompt = option(args, "--message") or ""
    else:
        prompt = args[-1] if args else ""
    # The first line that starts with a known mode: Ensemble may put a preamble
    # before the rendered template.
    mode, rest = "", ""
    for line in prompt.splitlines():
        word, _, tail = line.strip().partition(" ")
        if word in MODES:
            mode, rest = word, tail
            break

    def answer(text: str, **extra: object) -> None:
        if json_mode:
            document: dict[str, object] = {
                "type": "result",
                "is_error": False,
                "result": text,
                "usage": {"input_tokens": 1200, "output_tokens": 300},
            }
            document.update(extra)
            print(json.dumps(document))
        else:
            print(text)

    if mode == "answer":
        answer(rest)
    elif mode == "cost":
        answer(rest, total_cost_usd=0.25)
    elif mode == "env":
        answer(json.dumps(dict(os.environ)))
    elif mode == "argv":
        answer(json.dumps(args))
    elif mode == "ratelimit-ok":
        print("API Error: Rate limit reached. Your limit resets in 5 minutes.")
    elif mode == "ratelimit-fail":
        print("You've hit your limit · resets 5pm (Europe/Paris)")
        return 1
    elif mode == "auth":
        print("Invalid API key · Please run /login", file=sys.stderr)
        return 1
    elif mode == "overloaded":
        print(
            json.dumps(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            )
        )
        return 1
    elif mode == "is-error":
        print(json.dumps({"type": "result", "is_error": True, "result": "the tool gave up"}))
    elif mode in ("hang", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            child_argv = ["bash", "-c", "trap '' TERM; sleep 300 & wait"]
        else:
            child_argv = ["sleep", "300"]
        child = subprocess.Popen(child_argv)
        # Written in one go to FILE, which may be a FIFO the test listens on.
        with open(rest, "w") as pid_file:
            pid_file.write(f"{os.getpid()} {child.pid}\n")
        while True:
            time.sleep(60)
    elif mode == "flood":
        chunk = b"x" * 1023 + b"\n"
        out = sys.stdout.buffer
        for _ in range(int(rest) * 1024):
            out.write(chunk)
        out.write(b"END\n")
    elif mode == "badutf8":
        sys.stdout.buffer.write(b"ok \xff\xfe\x80 \xc3\x28 end\n")
        sys.stderr.buffer.write(b"warn \xff\n")
    else:
        print(f"no known mode in the prompt: {prompt[:200]!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
