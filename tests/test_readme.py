"""The README's commands are true: every `cnode` / `certify` line in its shell blocks parses with the flags it names,
and every script it runs exists (what each command prints is checked by the tests of that command)."""

import re
import shlex
from pathlib import Path

import pytest

from certify.cli import build_certify_parser, build_parser

REPO = Path(__file__).resolve().parents[1]


def shell_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks: continuation lines joined, comments and prompts dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and not line.lstrip().startswith("#!"):
                out.append(words)
    return out


def cli_argv(words: list[str]) -> tuple[str, list[str]] | None:
    """('cnode' | 'certify', argv) of a command line that runs the CLI (also under torchrun), else None."""
    if words[0] in ("cnode", "certify"):
        return words[0], words[1:]
    if words[0] == "torchrun" and "-m" in words:
        rest = words[words.index("-m") + 1:]
        if rest and rest[0] == "certify":
            return "cnode", rest[1:]  # python -m certify is `cnode`
    return None


COMMANDS = shell_commands((REPO / "README.md").read_text())


def test_the_readme_has_shell_blocks_with_commands():
    assert sum(cli_argv(w) is not None for w in COMMANDS) >= 30


@pytest.mark.parametrize("words", [w for w in COMMANDS if cli_argv(w)], ids=lambda w: " ".join(w)[:60])
def test_every_readme_cli_line_parses(words):
    prog, argv = cli_argv(words)
    parser = build_parser() if prog == "cnode" else build_certify_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # argparse: unknown flag, bad choice, missing argument
        pytest.fail(f"README line `{' '.join(words)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("words", [w for w in COMMANDS if w[0] == "python" and w[1].endswith(".py")],
                         ids=lambda w: w[1])
def test_every_readme_script_exists(words):
    assert (REPO / words[1]).is_file(), words[1]


def test_a_wrong_flag_would_be_caught():
    """The check can fail: a flag the CLI does not have, in a README-like block, is refused by the parser."""
    (words,) = shell_commands("```bash\ncnode train --no-such-flag 3  # comment\n```\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(cli_argv(words)[1])
