"""``manifest.json``: what a build folder holds, made from what, by which versions.

It is written last; its presence marks a finished build, and its hashes let anyone check
that the artifacts on a board are the ones the report speaks for.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from segcompile import __version__
from segcompile.artifacts import sha256_file, write_json_atomic
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo

MANIFEST_JSON = "manifest.json"
_VERSIONED_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnxsim", "torch", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of segcompile and the packages whose behaviour shapes the artifacts."""
    versions = {"segcompile": __version__}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def file_inventory(build_dir: Path) -> list[dict[str, Any]]:
    """Every file under ``build_dir`` (but the manifest) with its sha256 and size, in path order."""
    files = []
    for path in sorted(p for p in build_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(build_dir).as_posix()
        if relative == MANIFEST_JSON or ".partial" in relative:
            continue
        files.append({"path": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return files


def write_manifest(build_dir: Path, profile, info: ModelInfo, build: dict[str, Any]) -> Path:
    """Write ``build_dir/manifest.json`` describing the finished build."""
    manifest = {
        "versions": package_versions(),
        "target_profile": {
            "name": profile.name,
            "source": str(profile.source),
            "content_sha256": profile.content_sha256,
        },
        "model": {
            "name": info.name,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
            "input_shape": list(info.input_shape),
            "output_kind": info.output_kind,
        },
        "preprocessing": {
            "input_size": list(info.input_size),
            "mean": list(info.mean),
            "std": list(info.std),
            "channel_order": info.channel_order,
            "layout": info.layout,
        },
        "output": {
            "kind": info.output_kind,
            "layout": info.output_layout,
            "threshold": info.threshold if info.output_kind == "probability" else None,
            "labels": "output > threshold" if info.output_kind == "probability" else "argmax over channels",
        },
        "build": {key: (str(value) if isinstance(value, Path) else value) for key, value in build.items()},
        "files": file_inventory(build_dir),
    }
    return write_json_atomic(build_dir / MANIFEST_JSON, manifest)


def check_manifest(build_dir: Path) -> list[str]:
    """Files whose content no longer matches the manifest (empty when the build is intact)."""
    path = build_dir / MANIFEST_JSON
    if not path.is_file():
        raise SegcompileError(f"{path}: not found; the build did not finish")
    manifest = json.loads(path.read_text())
    problems = []
    for entry in manifest["files"]:
        target = build_dir / entry["path"]
        if not target.is_file():
            problems.append(f"{entry['path']}: missing")
        elif sha256_file(target) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs")
    return problems
