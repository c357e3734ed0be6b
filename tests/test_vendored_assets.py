"""The vendored front-end files are what VENDORED.md and the npm lockfile say, and load nothing remote.

Pages must work with no internet: any CDN or remote-font reference in a vendored script or style
would be a fetch from outside the gateway, so those are checked for here.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [ROOT / "tidehub/console/static/vendor", ROOT / "tidehub/api/static/swagger-ui"]

# Hosts that serve libraries or fonts to browsers. Links to project pages or licences are fine.
REMOTE_LOADS = re.compile(
    r"unpkg\.com|jsdelivr|cdnjs|//cdn\.|fonts\.googleapis|fonts\.gstatic|use\.typekit|use\.fontawesome",
    re.IGNORECASE,
)


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables keyed by their first header cell, each row as {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            found[header[0]] = []
        elif not set("".join(cells)) <= set("- "):
            found[header[0]].append(dict(zip(header, cells)))
    return found


def manifest(folder: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    parsed = tables((folder / "VENDORED.md").read_text())
    return parsed["Package"], parsed["File"]


def locked_versions() -> dict[str, str]:
    lock = json.loads((ROOT / "frontend/package-lock.json").read_text())
    return {path.removeprefix("node_modules/"): meta["version"]
            for path, meta in lock["packages"].items() if path.startswith("node_modules/")}


def css_without_comments(css: str) -> str:
    return re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)


def remote_css_loads(css: str) -> list[str]:
    """@import rules and url() values that would fetch something not inlined as a data: URL."""
    css = css_without_comments(css)
    imports = re.findall(r"@import[^;]*", css)
    urls = [u.strip().strip("'\"") for u in re.findall(r"url\(([^)]*)\)", css)]
    return imports + [u for u in urls if not u.startswith("data:")]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_every_listed_file_is_present_and_unchanged(folder):
    packages, files = manifest(folder)
    assert packages and files
    names = {row["Package"] for row in packages}
    for row in files:
        path = folder / row["File"]
        data = path.read_bytes()
        assert data, f"{path} is empty"
        assert len(data) == int(row["Bytes"]), f"{path} size differs from VENDORED.md"
        assert hashlib.sha256(data).hexdigest() == row["SHA-256"], f"{path} was edited; re-run vendor.py"
        assert row["Package"] in names, f"{row['File']} comes from unlisted {row['Package']}"
    # Nothing unlisted sits beside them, so the manifest is the whole truth about the folder.
    listed = {row["File"] for row in files} | {"VENDORED.md"}
    assert {p.name for p in folder.iterdir()} == listed
    # Every package's licence travels with its files.
    for name in names:
        assert any(row["Package"] == name and "LICENSE" in row["File"] for row in files), name


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_versions_match_the_lockfile(folder):
    locked = locked_versions()
    packages, _ = manifest(folder)
    for row in packages:
        assert row["Version"] == locked.get(row["Package"]), (
            f"{row['Package']}: VENDORED.md says {row['Version']}, package-lock.json {locked.get(row['Package'])}")


def test_the_console_has_what_pages_need():
    _, files = manifest(FOLDERS[0])
    assert {"htmx.min.js", "htmx-ext-sse.min.js", "chart.umd.min.js", "pico.min.css"} <= {r["File"] for r in files}
    _, files = manifest(FOLDERS[1])
    names = {r["File"] for r in files}
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= names
    # The package's own page and initializer point at the public petstore.
    assert not names & {"index.html", "swagger-initializer.js"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_no_vendored_script_or_style_loads_from_a_cdn(folder):
    checked = 0
    for path in sorted(folder.glob("*.js")) + sorted(folder.glob("*.css")):
        text = path.read_text(encoding="utf-8")
        hits = sorted({m.group(0) for m in REMOTE_LOADS.finditer(text)})
        assert not hits, f"{path.name} references {hits}"
        if path.suffix == ".css":
            assert not remote_css_loads(text), f"{path.name} loads {remote_css_loads(text)}"
        checked += 1
    assert checked >= 2


def test_pico_has_light_and_dark_and_no_remote_fonts():
    css = css_without_comments((FOLDERS[0] / "pico.min.css").read_text(encoding="utf-8"))
    assert "@import" not in css
    assert not re.search(r"@font-face", css), "pico should use the system font stack"
    assert "prefers-color-scheme:dark" in css.replace(" ", "")
    assert "[data-theme=dark]" in css.replace('"', "")


def test_the_checks_catch_remote_loads():
    assert remote_css_loads('@import url("https://fonts.googleapis.com/css2?family=Inter");')
    assert remote_css_loads("a{background:url(//example.com/x.png)}")
    assert not remote_css_loads('/* https://picocss.com */ a{background:url("data:image/svg+xml,x")}')
    assert REMOTE_LOADS.search('s.src="https://cdn.jsdelivr.net/npm/x"')
    assert REMOTE_LOADS.search("import('https://unpkg.com/htmx.org')")
    assert not REMOTE_LOADS.search("/*! https://www.chartjs.org */")
