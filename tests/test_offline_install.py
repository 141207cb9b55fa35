"""envs/: install targets, a wheelhouse used with the index disabled, and the index fallback."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from launchers import REPO

DEAD_INDEX = "http://127.0.0.1:9/simple"  # nothing listens there: any index access fails


def _wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """Write a minimal pure-Python wheel (no build tools, no network)."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": meta,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


def _env(index: str | None = None) -> dict:
    """This machine's environment without its pip settings (mirrors, find-links, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    if index:
        env["PIP_INDEX_URL"] = index
    return env


def _sh(script: str, *args: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        ["bash", f"envs/{script}", *map(str, args)],
        cwd=REPO,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _quick_venv(path: Path) -> Path:
    """A venv that borrows this interpreter's pip (fast); installs still land in the venv."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
        check=True,
    )
    return path / "bin" / "python"


def _lines(out: str, word: str) -> dict[str, str]:
    """`[envs] name==version  WORD  location` lines -> {name: location}."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "[envs]" and parts[2] == word and "==" in parts[1]:
            rows[parts[1].split("==")[0].replace("_", "-")] = parts[3]
    return rows


def test_offline_install_from_a_wheelhouse_with_the_index_disabled(tmp_path):
    wh = tmp_path / "wheelhouse"
    _wheel(wh, "rlinf_probe_a", "1.0", ("rlinf-probe-b>=2",))
    _wheel(wh, "rlinf_probe_b", "2.1")
    _wheel(wh, "rlinf_probe_b", "1.0")  # too old for probe_a: must not be picked
    req = tmp_path / "site.txt"
    req.write_text("# site packages\nrlinf-probe-a==1.0  # needs probe-b\n")
    venv = tmp_path / "venv"
    p = _sh(
        "install.sh", "custom", "--requirements", req, "--wheelhouse", wh, "--venv", venv,
        "--python", sys.executable, "--pip", "--offline", "--modulefile", tmp_path / "modules",
        env=_env(DEAD_INDEX),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    local = _lines(p.stdout, "wheelhouse")
    assert local == {
        "rlinf-probe-a": str(wh / "rlinf_probe_a-1.0-py3-none-any.whl"),
        "rlinf-probe-b": str(wh / "rlinf_probe_b-2.1-py3-none-any.whl"),
    }, p.stdout
    assert not _lines(p.stdout, "index")
    check = subprocess.run(
        [venv / "bin" / "python", "-c", "import rlinf, rlinf_probe_a, rlinf_probe_b as b; print(b.VERSION, rlinf.__file__)"],
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["2.1", str(REPO / "rlinf" / "__init__.py")]
    module = (tmp_path / "modules" / "rlinf" / "custom.lua").read_text()
    assert f'local venv = "{venv}"' in module and "@VENV@" not in module


def test_what_the_wheelhouse_lacks_comes_from_the_index_one_line_per_package(tmp_path):
    wh = tmp_path / "wheelhouse"
    _wheel(wh, "rlinf_probe_a", "1.0")
    req = tmp_path / "site.txt"
    req.write_text("rlinf-probe-a==1.0\ntomli-w==1.0.0\n")
    py = _quick_venv(tmp_path / "venv")
    args = ["custom", "--requirements", req, "--wheelhouse", wh, "--venv", py.parent.parent,
            "--pip", "--no-project"]  # fmt: skip
    # --offline refuses before touching anything, naming what is missing
    p = _sh("install.sh", *args, "--offline")
    assert p.returncode == 2
    assert "--offline: the wheelhouse cannot satisfy: tomli-w==1.0.0" in p.stderr
    p = _sh("install.sh", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tomli-w==1.0.0: not in the wheelhouse: using the index" in p.stdout
    assert _lines(p.stdout, "wheelhouse") == {
        "rlinf-probe-a": str(wh / "rlinf_probe_a-1.0-py3-none-any.whl")
    }
    index = _lines(p.stdout, "index")
    assert list(index) == ["tomli-w"] and index["tomli-w"].startswith("http"), p.stdout


def test_download_fills_a_wheelhouse_that_installs_offline_with_git_dependencies(tmp_path):
    # a git dependency (here a local repository) with a dependency of its own on PyPI
    repo = tmp_path / "probe-git-src"
    (repo / "probe_git").mkdir(parents=True)
    (repo / "probe_git" / "__init__.py").write_text("VALUE = 42\n")
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "probe-git"\nversion = "0.3"\ndependencies = ["tomli-w==1.0.0"]\n'
    )
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "probe"]):
        subprocess.run([*git, *cmd], check=True)
    req = tmp_path / "site.txt"
    req.write_text(f"probe-git @ git+file://{repo}\n")
    wh = tmp_path / "wheelhouse"
    p = _sh("download.sh", "custom", "--requirements", req, "--wheelhouse", wh,
            "--python", sys.executable, env=dict(os.environ))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert (wh / "repos" / "probe-git" / "pyproject.toml").exists()
    assert (wh / "tomli_w-1.0.0-py3-none-any.whl").exists()

    py = _quick_venv(tmp_path / "venv")
    p = _sh(
        "install.sh", "custom", "--requirements", req, "--wheelhouse", wh,
        "--venv", py.parent.parent, "--pip", "--no-project", "--offline", env=_env(DEAD_INDEX),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert _lines(p.stdout, "wheelhouse") == {
        "probe-git": str(wh / "repos" / "probe-git"),
        "tomli-w": str(wh / "tomli_w-1.0.0-py3-none-any.whl"),
    }, p.stdout
    out = subprocess.run([py, "-c", "import probe_git, tomli_w; print(probe_git.VALUE)"],
                         capture_output=True, text=True, env=_env())  # fmt: skip
    assert out.stdout.strip() == "42", out.stderr


@pytest.mark.parametrize(
    "target",
    [
        *[["embodied", "--model", m, "--env", e]
          for m in ("mlp", "openvla-oft", "openpi") for e in ("gym", "maniskill", "libero")],
        ["reason"], ["reason", "--rollout", "vllm"], ["reason", "--rollout", "sglang"], ["docs"],
    ],
)  # fmt: skip
def test_every_install_target_resolves(tmp_path, target):
    p = _sh("install.sh", *target, "--venv", tmp_path / "v", "--python", sys.executable,
            "--pip", "--dry-run", "--wheelhouse", tmp_path / "none")  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    planned = [line for line in p.stdout.splitlines() if line.startswith("[envs] dry run: ")]
    assert planned and all(line.endswith("<- index") for line in planned[1:]), p.stdout
    if target[0] != "docs":
        assert "[envs] dry run: torch>=2.6 <- index" in p.stdout
    if "libero" in target:
        assert "libero @ git+https://github.com/RLinf/LIBERO.git <- index" in p.stdout
    assert not (tmp_path / "v").exists()


def test_unknown_choices_are_refused_with_the_options():
    p = _sh("install.sh", "embodied", "--model", "rt2", "--dry-run")
    assert p.returncode == 2
    assert "--model rt2: choose one of mlp openvla-oft openpi" in p.stderr
    p = _sh("install.sh", "--dry-run")
    assert p.returncode == 2 and "name a target" in p.stderr


def _wheelhouse_module():
    spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "envs" / "wheelhouse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_classify_matches_versions_and_wheel_tags(tmp_path):
    wh = _wheelhouse_module()
    _wheel(tmp_path, "rlinf_probe_a", "1.0")
    (tmp_path / "numpy-1.0-cp27-cp27mu-manylinux1_x86_64.whl").write_bytes(b"")  # wrong tags
    (tmp_path / "probe_sdist-0.5.tar.gz").write_bytes(b"")
    rows = wh.classify(
        ["rlinf-probe-a>=1", "rlinf-probe-a>=2", "numpy==1.0", "probe-sdist", "absent"], tmp_path
    )
    assert [r[0] for r in rows] == ["local", "index", "index", "local", "index"]
    assert "wheelhouse has only numpy-1.0-cp27" in rows[2][2]
    assert wh.git_dependency("x @ git+https://h/r.git@v1.2") == ("x", "https://h/r.git", "v1.2")
    (tmp_path / "repos" / "x").mkdir(parents=True)
    (tmp_path / "repos" / "x" / "setup.py").write_text("")
    assert wh.localize("x @ git+https://h/r.git", tmp_path) == f"x @ file://{tmp_path}/repos/x"
