#!/usr/bin/env python3
"""Requirement and wheelhouse bookkeeping for envs/install.sh and envs/download.sh.

Runs under the target environment's interpreter with only the standard library and pip (it uses
pip's vendored `packaging`), so it works before anything else is installed.

    wheelhouse.py requirements [--wheelhouse WH] FILE...   merged requirement lines; a git
                                                           dependency becomes file://WH/repos/NAME
                                                           when download.sh cloned it there
    wheelhouse.py classify --wheelhouse WH REQ...          one line per requirement:
                                                           "local<TAB>REQ<TAB>FILE" or
                                                           "index<TAB>REQ<TAB>WHY"
    wheelhouse.py report [--wheelhouse WH] REPORT.json...  one line per installed package, from
                                                           `pip install --report`, saying where
                                                           it came from
    wheelhouse.py git REQ...                               "NAME<TAB>URL<TAB>REF" per git dep
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

try:  # pip's copy first: it is in every venv, `packaging` itself may not be
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import (
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
except ImportError:  # pragma: no cover - pip always vendors packaging
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

SDIST_SUFFIXES = (".tar.gz", ".zip")
GIT = re.compile(r"^git\+(?P<url>[^@#]+?)(?:@(?P<ref>[^#]+))?(?:#.*)?$")
GIT_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(?P<url>git\+\S+)\s*$")


def read_requirements(files: list[str]) -> list[str]:
    """Requirement lines of several files, comments and blanks dropped, first mention wins."""
    out: list[str] = []
    seen: set[str] = set()
    for f in files:
        for raw in Path(f).read_text().splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                sys.exit(f"{f}: option lines ({line}) are not supported; list requirements only")
            git = GIT_LINE.match(line)
            if git:  # `packaging` rejects some valid git URLs (git+file:///...)
                key = canonicalize_name(git.group("name"))
            else:
                try:
                    req = Requirement(line)
                except InvalidRequirement as e:
                    sys.exit(f"{f}: cannot parse requirement {line!r}: {e}")
                if req.marker is not None and not req.marker.evaluate():
                    continue  # not for this interpreter/platform
                key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                out.append(line)
    return out


def git_dependency(line: str) -> tuple[str, str, str | None] | None:
    """(name, url, ref) for `name @ git+URL[@REF]`, else None."""
    line_m = GIT_LINE.match(line.strip())
    m = GIT.match(line_m.group("url")) if line_m else None
    return (line_m.group("name"), m.group("url"), m.group("ref")) if line_m and m else None


def localize(line: str, wheelhouse: Path | None) -> str:
    """`name @ git+URL` -> `name @ file://WH/repos/name` when download.sh cloned it there."""
    dep = git_dependency(line)
    if dep is None or wheelhouse is None:
        return line
    repo = wheelhouse / "repos" / dep[0]
    if (
        (repo / ".git").exists()
        or (repo / "setup.py").exists()
        or (repo / "pyproject.toml").exists()
    ):
        return f"{dep[0]} @ file://{repo.resolve()}"
    return line


def _dists(wheelhouse: Path) -> list[tuple[str, str, Path, bool]]:
    """(canonical name, version, path, compatible with this interpreter) per file in WH."""
    tags = set(sys_tags())
    out = []
    for p in sorted(wheelhouse.iterdir()) if wheelhouse.is_dir() else []:
        try:
            if p.name.endswith(".whl"):
                name, version, _build, wtags = parse_wheel_filename(p.name)
                out.append((name, str(version), p, bool(tags & set(wtags))))
            elif p.name.endswith(SDIST_SUFFIXES):
                name, version = parse_sdist_filename(p.name)
                out.append((name, str(version), p, True))
        except Exception:  # noqa: BLE001 - a stray file is simply not a distribution
            continue
    return out


def classify(reqs: list[str], wheelhouse: Path) -> list[tuple[str, str, str]]:
    """For each requirement: ("local", req, file) when WH can satisfy it, else ("index", req, why)."""
    dists = _dists(wheelhouse)
    rows = []
    for line in reqs:
        if git_dependency(line):
            rows.append(("index", line, f"not cloned into {wheelhouse}/repos"))
            continue
        req = Requirement(line)
        if req.url:
            url = urlparse(req.url)
            if url.scheme == "file" and Path(unquote(url.path)).exists():
                rows.append(("local", line, unquote(url.path)))
            else:
                rows.append(("index", line, f"{req.url} is not a local path"))
            continue
        name = canonicalize_name(req.name)
        same = [d for d in dists if d[0] == name]
        ok = [d for d in same if d[3] and req.specifier.contains(d[1], prereleases=True)]
        if ok:
            rows.append(("local", line, str(ok[-1][2])))
        elif same:
            have = ", ".join(d[2].name for d in same)
            rows.append(("index", line, f"wheelhouse has only {have}"))
        else:
            rows.append(("index", line, "not in the wheelhouse"))
    return rows


def report_lines(reports: list[str], wheelhouse: Path | None) -> list[str]:
    """One line per package installed by pip, from its --report JSON: where it came from."""
    wh = str(wheelhouse.resolve()) if wheelhouse else None
    lines = []
    for r in reports:
        if not os.path.exists(r):
            continue
        data = json.loads(Path(r).read_text())
        for item in data.get("install", []):
            meta = item.get("metadata", {})
            name = f"{meta.get('name', '?')}=={meta.get('version', '?')}"
            url = item.get("download_info", {}).get("url", "")
            parsed = urlparse(url)
            if parsed.scheme == "file":
                path = unquote(parsed.path)
                where = "wheelhouse" if wh and path.startswith(wh) else "local"
                lines.append(f"[envs] {name:<40} {where:<10} {path}")
            else:
                lines.append(f"[envs] {name:<40} {'index':<10} {url}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="envs/wheelhouse.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("requirements")
    r.add_argument("--wheelhouse", type=Path)
    r.add_argument("files", nargs="+")
    c = sub.add_parser("classify")
    c.add_argument("--wheelhouse", type=Path, required=True)
    c.add_argument("reqs", nargs="*")
    rep = sub.add_parser("report")
    rep.add_argument("--wheelhouse", type=Path)
    rep.add_argument("reports", nargs="*")
    g = sub.add_parser("git")
    g.add_argument("reqs", nargs="*")
    a = p.parse_args(argv)
    if a.cmd == "requirements":
        out = [localize(line, a.wheelhouse) for line in read_requirements(a.files)]
    elif a.cmd == "classify":
        out = ["\t".join(row) for row in classify(a.reqs, a.wheelhouse)]
    elif a.cmd == "report":
        out = report_lines(a.reports, a.wheelhouse)
    else:
        deps = [git_dependency(line) for line in a.reqs]
        out = [f"{d[0]}\t{d[1]}\t{d[2] or ''}" for d in deps if d]
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
