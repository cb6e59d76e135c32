"""Every link of README.md and docs/*.md leads somewhere: a file or folder of the repository, and a heading there.

Markdown links [text](target) and images ![alt](target), outside code; http(s) and mailto links are not followed.
An anchor (#x, or file.md#x) must name a heading of that file by GitHub's rules: lowercase, punctuation dropped
but for hyphens and underscores, spaces made hyphens, a repeated heading numbered -1, -2, ...
Needs neither TensorFlow nor the corpus."""
import glob
import os
import re
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)


def prose(text):
    """The text outside fenced code blocks and code spans (indented code holds no [text](target) here)."""
    text = FENCE.sub("", text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """The anchors of a markdown file's headings, repeated ones numbered as GitHub numbers them."""
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    seen, result = {}, set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    with open(path, encoding="utf-8") as f:
        return [m.group(2) for m in LINK.finditer(prose(f.read()))]


def broken(page):
    """The links of one page (relative to the repository) that lead nowhere, each with why."""
    source = os.path.join(ROOT, page)
    problems = []
    for target in links(source):
        if re.match(r"(https?|mailto):", target, re.I):
            continue
        if not target:
            problems.append(f"{target!r}: an empty link")
            continue
        file_part, _, anchor = target.partition("#")
        file_part = urllib.parse.unquote(file_part)
        path = os.path.normpath(os.path.join(os.path.dirname(source), file_part)) if file_part else source
        if os.path.commonpath([ROOT, path]) != ROOT:
            problems.append(f"{target!r}: outside the repository")
        elif not os.path.exists(path):
            problems.append(f"{target!r}: no such file or folder {os.path.relpath(path, ROOT)}")
        elif anchor and path.endswith(".md") and urllib.parse.unquote(anchor) not in anchors(path):
            problems.append(f"{target!r}: no heading #{anchor} in {os.path.relpath(path, ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_every_link_resolves(page):
    assert os.path.exists(os.path.join(ROOT, page))
    problems = broken(page)
    assert not problems, f"{page}: {len(problems)} broken link(s):\n" + "\n".join(problems)


def test_the_pages_are_there_and_open_with_a_summary():
    assert "docs/reproducing.md" in PAGES and len(PAGES) >= 8
    for page in PAGES[1:]:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            lines = f.read().split("\n")
        assert lines[0].startswith("# "), f"{page}: the first line is not its title"
        body = [line for line in lines[1:lines.index(next(l for l in lines[1:] if l.startswith("## ")))]
                if line.strip()]
        assert 1 <= len(body) <= 12, f"{page}: no summary of a few lines under its title"


def test_the_anchor_rules():
    assert slug("Using a trained model: `lm.py`") == "using-a-trained-model-lmpy"
    assert slug("small_tied, beyond the paper") == "small_tied-beyond-the-paper"
    assert slug("Speed on an AVX-512 EPYC") == "speed-on-an-avx-512-epyc"
    assert slug("What's new? (2.21)") == "whats-new-221"
    text = "a [x](b.md#c) `[y](nowhere)` ![z](p.png)\n```\n[w](nowhere)\n```\n[long\ntext](d.md)"
    assert [m.group(2) for m in LINK.finditer(prose(text))] == ["b.md#c", "p.png", "d.md"]
