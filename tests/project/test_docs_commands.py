"""The documentation names only commands and options that exist.

Every command line that runs ``ucofia`` or ``ucofia-run`` in README.md, docs/*.md and
benchmarks/README.md is found (fenced shell blocks, with ``\\`` continuation lines and trailing
``#`` comments; inline code spans, also across a line break; ``.venv/bin/ucofia ...``,
``python -m ucofia.cli ...`` and ``torchrun ... -m ucofia.cli ...`` forms), its sub-command path
is resolved on the real click groups (``ucofia.cli:main``, ``runtime.cli:main``), and every
``--flag`` / ``-x`` on it must be an option of that command that its ``--help`` shows. Lines
whose sub-command is a placeholder (``ucofia-run <cmd>``, ``ucofia-run ...``) are skipped.
Relative links between these files must point at files and headings that exist.

Nothing here imports torch: the two CLIs import their commands' heavy dependencies only when a
command runs (checked in a subprocess below).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from data_paths import REPO_ROOT

REPO = REPO_ROOT
PROGRAMS = {"ucofia": "ucofia.cli", "ucofia-run": "runtime.cli"}
MODULES = {module: program for program, module in PROGRAMS.items()}
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh", "shell-session"}
WRAPPERS = {"sudo", "time", "nohup", "exec", "env", "command"}
PLACEHOLDER = re.compile(r"<.*>|\[.*\]|\{.*\}|\.\.\.|…|[A-Z][A-Z0-9_]*")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LONG_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "benchmarks" / "README.md"]


@dataclass(frozen=True)
class DocCommand:
    """One invocation of a program named in a document."""

    file: str
    line: int
    text: str               # the command as written (continuations joined)
    program: str            # "ucofia" or "ucofia-run"
    args: tuple[str, ...]   # the words after the program (or after `-m ucofia.cli`)
    comment_flags: tuple[str, ...] = ()  # --flags in a trailing `# ...` comment of the same line

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# ---------------------------------------------------------------- finding the command lines

def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment): a shell comment starts at a `#` at the start or after whitespace, outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:]
    return line, ""


def _segments(text: str) -> list[list[str]]:
    """Shell words of each simple command in ``text`` (split at `&&`, `||`, `|`, `;`, `&`, parentheses)."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;()")
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes in prose-like code: fall back to whitespace
        tokens = re.split(r"\s+|(&&|\|\||[|;&()])", text)
        tokens = [t for t in tokens if t]
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set("|&;()"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(program, args) when these shell words run ucofia or ucofia-run, else None."""
    i = 0
    while i < len(words) and (words[i] in WRAPPERS or re.fullmatch(r"[A-Za-z_]\w*=\S*", words[i])):
        i += 1
    if i >= len(words) or words[i].endswith("/"):
        return None
    base = words[i].rsplit("/", 1)[-1]
    if base in PROGRAMS:
        return base, words[i + 1:]
    if re.fullmatch(r"python(3(\.\d+)?)?|torchrun", base):
        for j in range(i + 1, len(words) - 1):
            if words[j] == "-m" and words[j + 1] in MODULES:
                return MODULES[words[j + 1]], words[j + 2:]
    return None


def _sub_commands() -> dict[str, str]:
    """First-level command name -> its program (the two programs share no command name)."""
    owners: dict[str, str] = {}
    for program in PROGRAMS:
        group = root_group(program)
        for name in group.list_commands(click.Context(group, info_name=program)):
            assert name not in owners, f"{name!r} is a command of both programs"
            owners[name] = program
    return owners


def commands_in(text: str, file: str, *, line: int, comment_flags: tuple[str, ...] = (),
                bare: bool = False) -> list[DocCommand]:
    """Invocations in a piece of shell text; with ``bare``, also a command named without its
    program but with options (prose such as `merge --store`)."""
    found = []
    for words in _segments(text):
        hit = _invocation(words)
        if hit is None and bare and words[0] in _sub_commands() and any(w.startswith("-") for w in words[1:]):
            hit = _sub_commands()[words[0]], words
        if hit:
            found.append(DocCommand(file, line, text.strip(), hit[0], tuple(hit[1]), comment_flags))
    return found


def _spans(text: str, file: str, first_line: int) -> list[DocCommand]:
    """Commands in the inline code spans of a block of text that starts at ``first_line``."""
    found = []
    for m in CODE_SPAN.finditer(text):
        content = m.group(2).replace("\\|", "|").replace("\n", " ")
        found += commands_in(content, file, line=first_line + text.count("\n", 0, m.start()), bare=True)
    return found


def extract_commands(markdown: str, file: str) -> list[DocCommand]:
    """Every ucofia / ucofia-run invocation in a markdown document, with its line number."""
    lines = markdown.split("\n")
    found: list[DocCommand] = []
    paragraph: list[str] = []
    paragraph_start = 0

    def flush() -> None:
        if paragraph:
            found.extend(_spans("\n".join(paragraph), file, paragraph_start))
            paragraph.clear()

    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                if not paragraph:
                    paragraph_start = i + 1
                paragraph.append(lines[i])
            else:
                flush()
            i += 1
            continue
        flush()
        marker, language = fence.group(1), fence.group(2).lower()
        i += 1
        while i < len(lines) and not re.fullmatch(rf"\s*{re.escape(marker[0])}{{{len(marker)},}}\s*", lines[i]):
            start, logical = i + 1, lines[i]
            while logical.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical.rstrip()[:-1] + " " + lines[i]
            i += 1
            if language not in SHELL_FENCES:
                continue
            code, comment = _split_comment(re.sub(r"^\s*[$>] ", "", logical))
            found.extend(_spans(comment, file, start))
            flags = tuple(LONG_FLAG.findall(CODE_SPAN.sub(" ", comment)))
            found.extend(commands_in(code, file, line=start, comment_flags=flags))
        i += 1  # the closing fence
    flush()
    return found


# ---------------------------------------------------------------- checking them against click

def root_group(program: str) -> click.Group:
    module = __import__(PROGRAMS[program], fromlist=["main"])
    return module.main


def _options(command: click.Command, ctx: click.Context) -> set[str]:
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


_HELP: dict[tuple[str, ...], str] = {}


def help_text(path: tuple[str, ...]) -> str:
    """``PROGRAM SUB ... --help`` run through click's CliRunner (cached per path)."""
    if path not in _HELP:
        result = CliRunner().invoke(root_group(path[0]), [*path[1:], "--help"], prog_name=path[0])
        if result.exit_code != 0:
            raise AssertionError(f"`{' '.join(path)} --help` exited {result.exit_code}: {result.output}")
        _HELP[path] = result.output
    return _HELP[path]


def _flag(word: str) -> str | None:
    word = word.strip("[](){}").rstrip(",.:")
    if not word.startswith("-") or word in {"-", "--"} or re.match(r"-\.?\d", word):
        return None
    return word.split("=", 1)[0]


def _known(flag: str, options: set[str], help_out: str) -> bool:
    def shown(name: str) -> bool:
        return name in options and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_out) is not None

    if shown(flag):
        return True
    # -abc: click's combined short flags
    return bool(re.fullmatch(r"-[A-Za-z]{2,}", flag)) and all(shown(f"-{c}") for c in flag[1:])


def check_command(cmd: DocCommand) -> list[str]:
    """Problems with one documented command (empty when it is fine or a placeholder)."""
    command: click.Command = root_group(cmd.program)
    ctx = click.Context(command, info_name=cmd.program)
    path = [cmd.program]
    args = list(cmd.args)
    i = 0
    problems = []
    while isinstance(command, click.Group) and i < len(args):
        word = args[i]
        if word.startswith("-"):
            flag = _flag(word)
            if flag and not _known(flag, _options(command, ctx), help_text(tuple(path))):
                problems.append(f"{cmd.where}: `{' '.join(path)}` has no option {flag}: {cmd.text}")
            i += 1
            continue
        if PLACEHOLDER.fullmatch(word):
            return problems
        names = word.split("/")
        missing = [n for n in names if command.get_command(ctx, n) is None]
        if missing:
            known = ", ".join(command.list_commands(ctx))
            return problems + [f"{cmd.where}: `{' '.join(path)}` has no command {missing[0]!r} "
                               f"(it has: {known}): {cmd.text}"]
        if len(names) > 1:  # `ucofia-run index/search/evaluate`: alternatives, named only
            for n in names:
                help_text((*path, n))
            return problems
        command = command.get_command(ctx, word)
        ctx = click.Context(command, info_name=word, parent=ctx)
        path.append(word)
        i += 1
    options, help_out = _options(command, ctx), help_text(tuple(path))
    flags = [f for f in map(_flag, args[i:]) if f] + list(cmd.comment_flags)
    for flag in flags:
        if not _known(flag, options, help_out):
            problems.append(f"{cmd.where}: `{' '.join(path)}` has no option {flag} "
                            f"(see `{' '.join(path)} --help`): {cmd.text}")
    return problems


def check_markdown(markdown: str, file: str) -> tuple[list[DocCommand], list[str]]:
    commands = extract_commands(markdown, file)
    return commands, [p for c in commands for p in check_command(c)]


def check_docs(root: Path = REPO) -> tuple[list[DocCommand], list[str]]:
    commands, problems = [], []
    for path in doc_files(root):
        found, bad = check_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
        commands += found
        problems += bad
    return commands, problems


# ---------------------------------------------------------------- the documentation itself

def test_documented_commands_and_options_exist():
    commands, problems = check_docs()
    assert not problems, "documentation names commands or options that do not exist:\n" + "\n".join(problems)
    # the extractor really found the documents' commands (a parser that finds nothing passes vacuously)
    named = {(c.program, c.args[0]) for c in commands if c.args and not c.args[0].startswith("-")}
    for expected in [("ucofia", "demo"), ("ucofia", "train"), ("ucofia", "export"), ("ucofia", "parity"),
                     ("ucofia-run", "index"), ("ucofia-run", "search"), ("ucofia-run", "evaluate"),
                     ("ucofia-run", "serve"), ("ucofia-run", "merge"), ("ucofia-run", "api-key")]:
        assert expected in named, f"no `{' '.join(expected)}` command line found in the docs"
    assert len(commands) > 100, len(commands)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    in_fence, anchors = False, set()
    for line in path.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def test_relative_links_resolve():
    problems = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        prose = re.sub(r"^\s*(`{3,}|~{3,}).*?^\s*\1\s*$", "", text, flags=re.S | re.M)
        prose = CODE_SPAN.sub("", prose)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(REPO)}: ({target})"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_help_walking_does_not_import_torch():
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests/project', sys.argv[1] + '/tests/helpers']\n"
            "import test_docs_commands as t\n"
            "commands, problems = t.check_docs()\n"
            "assert commands and not problems, problems\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"walking the CLIs' --help imported {out.stdout.strip()}"


# ---------------------------------------------------------------- the checker on synthetic documents

GOOD = """\
# Title

```bash
python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ucofia demo -o demo_run
ucofia-run index --bundle B --videos list.txt \\
    --bank bank.txt -o I --store float16   # --no-thumbnails skips them
ucofia-run api-key create --file keys.json --name alice [--scope admin]
torchrun --nproc_per_node 4 -m ucofia.cli train --config msrvtt --data /data/msrvtt -o runs/b32
# a comment naming `ucofia export --trt`
ucofia-run <cmd> --whatever
FOO=1 ucofia-run search --index I --query "a # in quotes" --top-k=5 -o -
```

```json
{"cmd": "ucofia-run serve --not-a-shell-block"}
```

Inline: `ucofia parity --checkpoint C --bundle B --benchmark D
--bank train_captions.txt`, `ucofia-run ...`, `ucofia-run index/search/evaluate`, `ucofia/`,
`python -m runtime.cli compact --index I -q` and `ucofia --version`; in prose `index --window W
--stride S`, `merge --store` and `export` alone.
"""


def test_checker_accepts_real_commands_and_skips_placeholders():
    commands, problems = check_markdown(GOOD, "GOOD.md")
    assert problems == []
    lines = {(c.line, c.program, c.args[:1]) for c in commands}
    assert (4, "ucofia", ("demo",)) in lines
    assert (5, "ucofia-run", ("index",)) in lines          # a continuation line joins its command
    assert (8, "ucofia", ("train",)) in lines              # torchrun -m ucofia.cli
    assert (9, "ucofia", ("export",)) in lines             # an inline span in a comment
    assert (18, "ucofia", ("parity",)) in lines            # an inline span across a line break
    assert (20, "ucofia-run", ("compact",)) in lines       # python -m runtime.cli
    index = next(c for c in commands if c.args[:1] == ("index",))
    assert "--bank" in index.args and index.comment_flags == ("--no-thumbnails",)
    assert not any("--not-a-shell-block" in c.text for c in commands)
    bare = {(c.line, c.program, c.args[0]) for c in commands
            if c.args[0] in ("index", "merge", "export") and c.line > 19}
    assert bare == {(20, "ucofia-run", "index"), (21, "ucofia-run", "merge")}  # `export` alone names no option


@pytest.mark.parametrize("doc, needle", [
    ("```bash\nucofia-run search --index I --query q --no-such-flag\n```\n",
     "GOOD.md:2: `ucofia-run search` has no option --no-such-flag"),
    ("```\nucofia-run index --bundle B \\\n  --videos V -o I --loud\n```\n",
     "GOOD.md:2: `ucofia-run index` has no option --loud"),
    ("```bash\nucofia-run index --bundle B --videos V -o I -z\n```\n", "has no option -z"),
    ("```bash\nucofia-run search --index I --bank b.txt\n```\n", "`ucofia-run search` has no option --bank"),
    ("```bash\nucofia-run compact --index I   # --rows 10 per shard\n```\n", "has no option --rows"),
    ("```bash\nucofia-run frobnicate --index I\n```\n", "`ucofia-run` has no command 'frobnicate'"),
    ("```bash\nucofia-run api-key rotate --file k.json\n```\n", "`ucofia-run api-key` has no command 'rotate'"),
    ("Run `ucofia export CKPT -o B\n--fp8` first.\n", "GOOD.md:1: `ucofia export` has no option --fp8"),
    ("```bash\npython -m ucofia.cli train -o runs/x --epoch 3\n```\n", "`ucofia train` has no option --epoch"),
    ("```bash\n.venv/bin/ucofia demo-data -o d --scale 2 --lengthy\n```\n",
     "`ucofia demo-data` has no option --lengthy"),
    ("Convert it with `merge --stored int8`.\n", "`ucofia-run merge` has no option --stored"),
    ("Serve with `serve --preload 0`.\n", "`ucofia-run serve` has no option --preload"),
])
def test_checker_rejects_unknown_commands_and_flags(doc, needle):
    _, problems = check_markdown(doc, "GOOD.md")
    assert any(needle in p for p in problems), problems
