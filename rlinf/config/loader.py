"""Load a YAML config, apply Hydra-style overrides and map it onto the typed tree.

`load_config("cartpole_ppo.yaml", ["runner.seed=3", "+env.train.init_params.foo=1"])` finds the
file (a path, or a name inside configs/), merges its `defaults:` parents, applies overrides,
resolves ${...} interpolations, converts to RLinfConfig and validates; every problem is raised
at once in one ConfigError. Nothing here touches processes, devices or the file system beyond
reading the YAML.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlinf.config.errors import ConfigError, Issues
from rlinf.config.root import RLinfConfig
from rlinf.config.typed import _MISSING, did_you_mean, from_dict

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def config_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("RLINF_CONFIG_DIR"):
        dirs.append(Path(os.environ["RLINF_CONFIG_DIR"]))
    dirs += [Path.cwd() / "configs", REPO_CONFIGS]
    return dirs


def find_config(name: str) -> Path:
    """A path as given, else `NAME` (with or without .yaml) inside a configs/ directory."""
    p = Path(name)
    if p.is_file():
        return p
    candidates = [name] if name.endswith((".yaml", ".yml")) else [name + ".yaml", name]
    for d in config_dirs():
        for c in candidates:
            if (d / c).is_file():
                return d / c
        for c in candidates:  # e.g. `hetero_18node.yaml` found under configs/examples/
            hits = sorted(d.rglob(Path(c).name)) if d.is_dir() else []
            if hits:
                return hits[0]
    known = sorted({f.name for d in config_dirs() if d.is_dir() for f in d.rglob("*.yaml")})
    hint = did_you_mean(Path(name).name, known)
    raise ConfigError(
        [],
        source=f"--config {name}: no such file, and no '{name}' in {', '.join(map(str, config_dirs()))}"
        f"{hint}",
    )


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    if path.resolve() in seen:
        raise ConfigError([], source=f"{path}: `defaults` include themselves in a loop")
    try:
        node = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as e:
        raise ConfigError([], source=f"{path}: not valid YAML ({e})") from None
    defaults = (
        node.pop("defaults", None) if isinstance(node, dict) or OmegaConf.is_dict(node) else None
    )
    merged = OmegaConf.create({})
    for parent in defaults or []:
        if parent == "_self_":
            continue
        ppath = path.parent / (parent if str(parent).endswith(".yaml") else f"{parent}.yaml")
        if not ppath.is_file():
            ppath = find_config(str(parent))
        merged = OmegaConf.merge(merged, _load_yaml(ppath, seen + (path.resolve(),)))
    out = OmegaConf.merge(merged, node)
    # A placement is one whole: a child's replaces its parent's instead of merging role by role.
    child = OmegaConf.select(node, "cluster.component_placement")
    if child is not None and defaults:
        out.cluster.component_placement = child
    return out


def _schema_allows(path: list[str]) -> tuple[bool, str]:
    """Is this dotted path a key of the typed schema? Returns (ok, did-you-mean hint)."""
    tp: Any = RLinfConfig
    for i, key in enumerate(path):
        origin = get_origin(tp)
        if origin in (typing.Union, __import__("types").UnionType):
            dcs = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
            if dcs:
                tp = dcs[0]
            else:
                return True, ""
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if key not in hints:
                return False, did_you_mean(key, hints)
            tp = hints[key]
            continue
        if get_origin(tp) is dict or tp is Any:
            return True, ""  # free-form below here
        if get_origin(tp) is list:
            return key.isdigit(), ""
        return False, f" ('{'.'.join(path[:i])}' has no sub-keys)"
    return True, ""


def apply_overrides(cfg: Any, overrides: list[str], issues: Issues) -> Any:
    """Hydra-style `key=value` (key must exist in the schema), `+key=value` (add), `~key` (drop)."""
    for ov in overrides:
        if ov.startswith("~"):
            key = ov[1:].split("=", 1)[0]
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                issues.add(key, f"override '{ov}' deletes a key that is not set")
            else:
                node.pop(leaf)
            continue
        add = ov.startswith("+")
        body = ov[1:] if add else ov
        if "=" not in body:
            issues.add(body, f"override '{ov}' must look like key=value")
            continue
        key, value = body.split("=", 1)
        ok, hint = _schema_allows(key.split("."))
        if not ok and not add:
            issues.add(key, f"unknown key in override '{ov}'{hint}")
            continue
        try:
            parsed = OmegaConf.from_dotlist([f"__v={value}"])["__v"]
        except OmegaConfBaseException as e:
            issues.add(key, f"cannot parse value in override '{ov}': {e}")
            continue
        OmegaConf.update(cfg, key, parsed, merge=add, force_add=True)
    return cfg


def load_config(
    name: str,
    overrides: list[str] | tuple[str, ...] = (),
    validate: bool = True,
    detected_accelerators: int | None = None,
    plan_only: bool = False,
    notes: list | None = None,
) -> RLinfConfig:
    """Load, override, type and validate a config; raise one ConfigError listing every problem.

    ``plan_only``: problems that only matter for a run (a missing model path) do not fail;
    they are appended to ``notes`` instead.
    """
    path = find_config(name)
    raw = _load_yaml(path)
    issues = Issues()
    raw = apply_overrides(raw, list(overrides), issues)
    try:
        data = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError([*issues], source=f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError([], source=f"{path}: the top level must be a mapping of sections")
    cfg = from_dict(RLinfConfig, data, "", issues)
    if cfg is _MISSING:
        raise ConfigError(issues, source=str(path))
    if validate:
        from rlinf.config.validate import validate_config

        validate_config(cfg, issues, detected_accelerators=detected_accelerators)
    if plan_only:
        if notes is not None:
            notes.extend(i for i in issues if i.run_only)
        issues = Issues(i for i in issues if not i.run_only)
    if issues:
        raise ConfigError(issues, source=str(path))
    return cfg
