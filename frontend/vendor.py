"""Copy the front-end files Tidehub serves from frontend/node_modules into the Python package.

Run after `npm ci` in frontend/:  python frontend/vendor.py

Pages load these files from the package itself, never from a CDN, and Node is not needed at run
time. Each destination folder belongs to this script: it ends up holding exactly the files named
below plus a VENDORED.md manifest (package, version, licence, files, SHA-256), so re-running it
changes nothing and a file dropped from the list is removed. Stdlib only.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

FRONTEND = Path(__file__).resolve().parent
ROOT = FRONTEND.parent
NODE_MODULES = FRONTEND / "node_modules"
REFRESH = "cd frontend && npm ci && cd .. && python frontend/vendor.py"


@dataclass(frozen=True)
class Package:
    name: str
    licence: str  # what we expect; a refresh that changes a licence stops here for a human to look
    files: dict[str, str]  # path inside the npm package -> file name in the destination folder
    note: str = ""


@dataclass(frozen=True)
class Target:
    folder: Path
    purpose: str
    packages: list[Package] = field(default_factory=list)


TARGETS = [
    Target(
        ROOT / "tidehub/console/static/vendor",
        "Scripts and styles for the web console.",
        [
            Package("htmx.org", "0BSD",
                    {"dist/htmx.min.js": "htmx.min.js", "LICENSE": "LICENSE-htmx.org"}),
            Package("htmx-ext-sse", "0BSD",
                    {"dist/sse.min.js": "htmx-ext-sse.min.js", "LICENSE": "LICENSE-htmx-ext-sse"},
                    note="htmx's server-sent events extension"),
            Package("chart.js", "MIT",
                    {"dist/chart.umd.min.js": "chart.umd.min.js", "LICENSE.md": "LICENSE-chart.js"},
                    note="UMD build: a plain script tag defines window.Chart"),
            Package("@kurkle/color", "MIT", {"LICENSE.md": "LICENSE-kurkle-color"},
                    note="bundled inside chart.umd.min.js; only its licence is copied"),
            Package("@picocss/pico", "MIT",
                    {"css/pico.min.css": "pico.min.css", "LICENSE.md": "LICENSE-pico"},
                    note="standard build; light and dark (prefers-color-scheme or data-theme)"),
        ],
    ),
    Target(
        ROOT / "tidehub/api/static/swagger-ui",
        "Swagger UI for the interactive API docs. The gateway renders its own page; the package's "
        "index.html and swagger-initializer.js (which point at the petstore) are not copied, nor "
        "is the standalone preset (use layout \"BaseLayout\"). Pass validatorUrl: null so the page "
        "does not fetch a validator badge from the internet.",
        [
            Package("swagger-ui-dist", "Apache-2.0", {
                "swagger-ui-bundle.js": "swagger-ui-bundle.js",
                "swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt",
                "swagger-ui.css": "swagger-ui.css",
                "favicon-16x16.png": "favicon-16x16.png",
                "favicon-32x32.png": "favicon-32x32.png",
                "LICENSE": "LICENSE",
                "NOTICE": "NOTICE",
            }),
        ],
    ),
]


def fail(message: str) -> None:
    sys.exit(f"vendor.py: {message}")


def locked_versions() -> dict[str, str]:
    lock = json.loads((FRONTEND / "package-lock.json").read_text())
    prefix = "node_modules/"
    return {path[len(prefix):]: meta["version"] for path, meta in lock["packages"].items()
            if path.startswith(prefix) and "version" in meta}


def installed(package: Package, locked: dict[str, str]) -> tuple[Path, str]:
    """The package's folder and version, checked against the lockfile so stale installs can't leak in."""
    folder = NODE_MODULES / package.name
    manifest = folder / "package.json"
    if not manifest.is_file():
        fail(f"{package.name} is not installed; run: {REFRESH}")
    meta = json.loads(manifest.read_text())
    version = meta["version"]
    if locked.get(package.name) != version:
        fail(f"{package.name} {version} in node_modules, {locked.get(package.name)} in "
             f"package-lock.json; run: {REFRESH}")
    declared = meta.get("license")  # htmx-ext-sse declares none; its LICENSE file says 0BSD
    if declared is not None and declared != package.licence:
        fail(f"{package.name} {version} is licensed {declared!r}, not {package.licence!r}: "
             "check the new licence, then update vendor.py")
    return folder, version


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    path.write_bytes(data)
    return True


def vendor(target: Target, locked: dict[str, str]) -> list[str]:
    target.folder.mkdir(parents=True, exist_ok=True)
    changes: list[str] = []
    package_rows: list[str] = []
    file_rows: list[str] = []
    wanted = {"VENDORED.md"}
    for package in target.packages:
        folder, version = installed(package, locked)
        package_rows.append(f"| `{package.name}` | {version} | {package.licence} | {package.note} |")
        for source, name in package.files.items():
            data = (folder / source).read_bytes()
            if not data:
                fail(f"{package.name}/{source} is empty")
            if name in wanted:
                fail(f"two files are named {name} in {target.folder}")
            wanted.add(name)
            if write_if_changed(target.folder / name, data):
                changes.append(f"wrote {name}")
            digest = hashlib.sha256(data).hexdigest()
            file_rows.append(f"| `{name}` | `{package.name}` | `{source}` | {len(data)} | `{digest}` |")
    for stale in sorted(target.folder.iterdir()):
        if stale.name not in wanted:
            if not stale.is_file():
                fail(f"unexpected folder {stale}; this folder holds vendored files only")
            stale.unlink()
            changes.append(f"removed {stale.name}")
    manifest = "\n".join([
        "# Vendored front-end files",
        "",
        target.purpose,
        "",
        "Copied unchanged from npm (`frontend/package-lock.json`) by `frontend/vendor.py`; do not "
        "edit by hand. To refresh after changing `frontend/package.json`:",
        "",
        "```",
        REFRESH,
        "```",
        "",
        "| Package | Version | Licence | Notes |",
        "| --- | --- | --- | --- |",
        *package_rows,
        "",
        "| File | Package | From | Bytes | SHA-256 |",
        "| --- | --- | --- | --- | --- |",
        *file_rows,
        "",
    ])
    if write_if_changed(target.folder / "VENDORED.md", manifest.encode()):
        changes.append("wrote VENDORED.md")
    return changes


def main() -> None:
    locked = locked_versions()
    for target in TARGETS:
        changes = vendor(target, locked)
        where = target.folder.relative_to(ROOT)
        print(f"{where}: " + (", ".join(changes) if changes else "up to date"))


if __name__ == "__main__":
    main()
