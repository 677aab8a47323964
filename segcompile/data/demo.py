"""The bundled demo scenes (``calibration/demo``): rendered toy scenes with a fixed train/calib/eval split."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from segcompile.data.classes import DEMO_CLASSES
from segcompile.data.frames import FileDataset, FileEntry
from segcompile.errors import SegcompileError

ENV_VAR = "SEGCOMPILE_DEMO_DATA"
DEMO_SPLITS: tuple[str, ...] = ("train", "calib", "eval")
_REGENERATE = "python -m segcompile.data.demo_scenes --out calibration/demo --seed 0"


def demo_root() -> Path:
    """Where the demo set lives: ``$SEGCOMPILE_DEMO_DATA`` if set, else ``calibration/demo`` in the repo."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    # segcompile/data/demo.py -> repository root (the package is installed editable, beside calibration/).
    return Path(__file__).resolve().parents[2] / "calibration" / "demo"


def open_demo(split: str | None = None) -> FileDataset:
    """The demo set, one split of it (``train``, ``calib``, ``eval``) or, with ``split=None``, all frames."""
    if split is not None and split not in DEMO_SPLITS:
        raise SegcompileError(f"demo: unknown split {split!r}; expected one of {', '.join(DEMO_SPLITS)}")
    root = demo_root()
    description = _read_description(root)
    classes = tuple(description.get("classes") or ())
    if classes != DEMO_CLASSES:
        raise SegcompileError(
            f"{root / 'dataset.yaml'}: classes {list(classes)} differ from the demo classes "
            f"{list(DEMO_CLASSES)}"
        )
    entries = []
    for name in _split_names(root, split):
        image = root / "images" / f"{name}.jpg"
        if not image.is_file():
            raise SegcompileError(
                f"{image}: listed in {root / 'splits'} but missing; regenerate with {_REGENERATE}"
            )
        entries.append(FileEntry(name, image, root / "masks" / f"{name}.png"))
    spec = "demo" if split is None else f"demo:{split}"
    return FileDataset(spec, entries, DEMO_CLASSES)


def _read_description(root: Path) -> dict:
    path = root / "dataset.yaml"
    if not path.is_file():
        where = f"${ENV_VAR}={root}" if os.environ.get(ENV_VAR) else str(root)
        raise SegcompileError(
            f"demo data not found at {where} (no dataset.yaml); regenerate it with `{_REGENERATE}` "
            f"(needs `pip install 'segcompile[render]'`) or point {ENV_VAR} at a copy"
        )
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SegcompileError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(content, dict):
        raise SegcompileError(f"{path}: expected a mapping")
    return content


def _split_names(root: Path, split: str | None) -> list[str]:
    names: list[str] = []
    for part in DEMO_SPLITS if split is None else (split,):
        path = root / "splits" / f"{part}.txt"
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise SegcompileError(f"{path}: cannot read the {part} split ({exc})") from exc
        names.extend(line.strip() for line in lines if line.strip())
    return names
