"""Every relative link in the documentation resolves: the file exists and, for ``path.md#anchor``,
the target has a heading with that GitHub anchor. Covers the README, docs/ (the findings' topic
files included), experiments/README.md, results/README.md, results/*/paper_vs_ours.md, the
notebooks' markdown (cells and, in executed notebooks, markdown outputs) and the ``link`` fields
of src/burn/claims.yaml (relative to the repository root). No network: external links are
skipped."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.M | re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup dropped, lowercase, punctuation other than
    hyphens and spaces removed, spaces to hyphens (duplicates are numbered by ``anchors``)."""
    text = re.sub(r"<!--.*?-->", "", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def markdown_headings(text: str) -> list[str]:
    return [m.group(2) for m in HEADING.finditer(FENCE.sub("", text))]


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a markdown file's headings, the second ``x`` as ``x-1`` and so on."""
    seen: dict[str, int] = {}
    out = set()
    for h in markdown_headings(path.read_text(encoding="utf-8")):
        a = github_anchor(h)
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    html = re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8"))
    return frozenset(out | set(html))


def markdown_of(path: Path) -> str:
    """A markdown file's text, or a notebook's markdown cells and markdown outputs."""
    if path.suffix != ".ipynb":
        return path.read_text(encoding="utf-8")
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    join = lambda s: "".join(s) if isinstance(s, list) else s  # noqa: E731
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            parts.append(join(cell.get("source", "")))
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            if md is not None:
                parts.append(join(md))
    return "\n\n".join(parts)


def doc_files() -> list[Path]:
    globs = ["README.md", "docs/**/*.md", "experiments/README.md", "results/README.md",
             "results/*/paper_vs_ours.md", "notebooks/*.ipynb", "notebooks/executed/**/*.ipynb"]
    return sorted({p for g in globs for p in ROOT.glob(g) if p.is_file()})


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", markdown_of(path)))


def claim_links() -> list[str]:
    f = ROOT / "src/burn/claims.yaml"
    if not f.is_file():
        return []
    return [c["link"] for c in yaml.safe_load(f.read_text(encoding="utf-8")).values() if "link" in c]


def broken(target: str, base: Path, source: Path, root: Path = ROOT) -> str | None:
    """Why ``target``, a link from ``source`` resolved against folder ``base``, does not resolve
    (``None`` when it does or is external)."""
    if EXTERNAL.match(target):
        return None
    path, _, anchor = unquote(target).partition("#")
    dest = (base / path).resolve() if path else source.resolve()
    if not dest.exists():
        return "no such file"
    if root not in dest.parents and dest != root:
        return "outside the repository"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no heading with anchor #{anchor}"
    return None


def all_broken() -> list[str]:
    out = []
    for f in doc_files():
        for t in links(f):
            why = broken(t, f.parent, f)
            if why:
                out.append(f"{f.relative_to(ROOT)}: ({t}): {why}")
    for t in claim_links():
        why = broken(t, ROOT, ROOT / "src/burn/claims.yaml")
        if why:
            out.append(f"src/burn/claims.yaml: link {t}: {why}")
    return out


def test_every_documentation_link_resolves():
    files = doc_files()
    assert ROOT / "README.md" in files and ROOT / "docs/findings.md" in files
    assert sum(len(links(f)) for f in files) > 50  # the collector finds the links
    bad = all_broken()
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_claims_link_to_the_findings_page():
    """Each claim of claims.yaml links to its own section of docs/findings.md."""
    targets = claim_links()
    if not targets:
        pytest.skip("no claims.yaml")
    assert all(t.startswith("docs/findings.md#") for t in targets)
    assert len(set(targets)) == len(targets)


@pytest.mark.parametrize("heading, anchor", [
    ("Table 1: poisoned samples lie farther from the boundary",
     "table-1-poisoned-samples-lie-farther-from-the-boundary"),
    ("Fig. 2: a poisoned sample's adversarial label is its true class",
     "fig-2-a-poisoned-samples-adversarial-label-is-its-true-class"),
    ("The re-baselined `cpu` preset (BackdoorBench's setting)",
     "the-re-baselined-cpu-preset-backdoorbenchs-setting"),
    ("Over seeds (seeds 0-2, `cpu` preset in bf16)", "over-seeds-seeds-0-2-cpu-preset-in-bf16"),
    ("Paper vs ours: HOLDS <!-- verdict fig1: holds -->", "paper-vs-ours-holds"),
    ("See [the study](x.md#y)", "see-the-study"),
    ("lambda_end 0.5", "lambda_end-05"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_duplicate_headings_are_numbered(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("# A\n\n## Over seeds\n\n```\n## Not a heading\n```\n\n## Over seeds\n")
    assert anchors(f) == {"a", "over-seeds", "over-seeds-1"}
    g = tmp_path / "b.md"
    g.write_text("[x](a.md#over-seeds-1) [y](a.md#over-seeds-2) [z](a.md#not-a-heading) [w](c.md)"
                 " [u](https://example.org/none.md#x) [v](#b)\n\n# B\n")
    why = {t: broken(t, tmp_path, g, tmp_path) for t in links(g)}
    assert why == {"a.md#over-seeds-1": None, "a.md#over-seeds-2": "no heading with anchor #over-seeds-2",
                   "a.md#not-a-heading": "no heading with anchor #not-a-heading",
                   "c.md": "no such file", "https://example.org/none.md#x": None, "#b": None}
