"""The docs stay true: every relative link in them resolves, and every `dfcl ...` command they
name exists (its `--help` runs). Docs go stale silently; these checks make it loud."""
import argparse
import contextlib
import functools
import io
import re
from pathlib import Path

import pytest

from dfcl import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "results" / "README.md"]
README_MAX_LINES = 150  # a README read in five minutes; the details live in docs/

# `dfcl` then a subcommand-looking word (lowercase: `dfcl <command>`, `dfcl -v` and `dfcl: error`
# are not commands), then maybe a sub-subcommand. Not part of a longer name (`DFCL_WORKSPACE`,
# `dfcl-worker-data`), but `.venv/bin/dfcl demo` counts.
COMMAND = re.compile(r"(?<![\w-])dfcl[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9-]*))?")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def split_markdown(text: str) -> tuple[list[str], list[str]]:
    """(prose paragraphs outside fenced blocks, code: fenced blocks and inline spans).
    Fences may be indented (inside list items); a span never crosses a blank line."""
    prose, code, block, fence = [], [], [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, block = stripped[:3], []
        elif fence is not None and stripped.startswith(fence):
            code.append("\n".join(block))
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            prose.append(line)
    paragraphs = re.split(r"\n[ \t]*\n", "\n".join(prose))
    for paragraph in paragraphs:
        code.extend(m.group(2) for m in CODE_SPAN.finditer(paragraph))
    return paragraphs, code


def commands_in(text: str) -> set[tuple[str, ...]]:
    """Every `dfcl <sub> [<subsub>]` in code; the second word counts only where `<sub>` has
    subcommands of its own (else it is an argument, e.g. a path)."""
    found = set()
    for snippet in split_markdown(text)[1]:
        for m in COMMAND.finditer(snippet):
            sub, subsub = m.groups()
            found.add((sub, subsub) if subsub and subcommands(build_parser(), [sub]) else (sub,))
    return found


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    # The parser `dfcl` itself parses with (dfcl.cli.main starts with it): no workspace touched.
    return cli.build_parser()


def subcommands(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """The subcommand names below `words` (empty when there are none, or `words` is unknown)."""
    for word in words:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word not in choices:
            return set()
        parser = choices[word]
    return set(next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}))


def run_help(words: list[str]) -> tuple[int, str]:
    """`dfcl WORDS --help` in-process: (exit status, stdout and stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*words, "--help"])
    return exit_.value.code or 0, out.getvalue()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for paragraph in split_markdown(path.read_text())[0]:
        for line in paragraph.splitlines():
            m = re.match(r" {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", line)
            if m:
                s = slug(m.group(1).replace("`", ""))
                seen[s] = seen.get(s, 0) + 1
    # Repeated headings get -1, -2, ... as on GitHub.
    return {s if i == 0 else f"{s}-{i}" for s, n in seen.items() for i in range(n)}


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links of a markdown file whose target file (or heading anchor) is missing."""
    text = path.read_text() if text is None else text
    broken = []
    for paragraph in split_markdown(text)[0]:
        for target in LINK.findall(CODE_SPAN.sub(" ", paragraph)):  # a link shown as code is not one
            if SCHEME.match(target):  # http:, https:, mailto: ... are not ours to check offline
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{target} (no {resolved})")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


DOC_COMMANDS = sorted({words for doc in DOCS if doc.exists() for words in commands_in(doc.read_text())})


def test_docs_exist():
    missing = [str(d.relative_to(REPO)) for d in DOCS if not d.exists()]
    assert not missing and len(DOCS) > 3, missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_relative_links_resolve(doc):
    assert broken_links(doc) == []


@pytest.mark.parametrize("words", DOC_COMMANDS, ids=" ".join)
def test_named_command_has_help(words):
    status, output = run_help(list(words))
    assert status == 0, f"`dfcl {' '.join(words)} --help` exited {status}: {output[-500:]}"
    assert f"dfcl {' '.join(words)}" in output


def test_every_subcommand_is_documented():
    # The docs name each command a user can run, so none is undiscoverable but by --help.
    named = {words[0] for words in DOC_COMMANDS}
    assert subcommands(build_parser(), []) - named == set()


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


def test_the_checks_can_fail(tmp_path):
    # A made-up command and a dead link must be caught, or the tests above prove nothing.
    assert commands_in("Run `dfcl no-such-command --fast` or\n```\ndfcl demo\n```") == {("no-such-command",), ("demo",)}
    assert run_help(["no-such-command"])[0] != 0
    assert commands_in("`dfcl -v retrain`, `dfcl: error`, `python -m dfcl.data.demo_data`, `$DFCL_WORKSPACE`") == set()
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](missing.md) [bad anchor](page.md#nowhere) `[code](x.md)` [web](https://x)\n")
    assert broken_links(page) == [f"missing.md (no {tmp_path / 'missing.md'})", "page.md#nowhere (no heading #nowhere in page.md)"]
