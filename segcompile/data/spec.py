"""Dataset specs: the one string `--calib` / `--eval` take, and the single table of schemes it accepts.

Accepted today: ``demo``, ``demo:train|calib|eval``, ``folder:IMAGES[:MASKS]`` and a bare directory
(``images/`` and ``masks/`` inside it when present, else the directory itself as images without masks).
A new reader adds one :func:`register_scheme` line at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segcompile.data.demo import DEMO_SPLITS, open_demo
from segcompile.data.folder import open_folder
from segcompile.data.frames import SegmentationDataset
from segcompile.errors import SegcompileError

# What the frames are for. A spec that names no subset (``demo``, later ``cityscapes:ROOT``) lets the
# reader pick the matching one, so calibration and evaluation frames stay disjoint by default.
ROLES: tuple[str, ...] = ("train", "calib", "eval")

# (argument after "scheme:", or "" when absent; role or None) -> dataset
SchemeOpener = Callable[[str, str | None], SegmentationDataset]


@dataclass(frozen=True)
class DatasetScheme:
    """One accepted ``scheme[:argument]`` form."""

    name: str
    usage: str  # shown in errors and help, e.g. "folder:IMAGES[:MASKS]"
    opener: SchemeOpener
    summary: str = ""


_SCHEMES: dict[str, DatasetScheme] = {}


def register_scheme(name: str, usage: str, opener: SchemeOpener, summary: str = "") -> None:
    """Accept ``name`` or ``name:ARGUMENT`` as a dataset spec, opened by ``opener(argument, role)``."""
    if name in _SCHEMES:
        raise ValueError(f"dataset scheme {name!r} is already registered")
    _SCHEMES[name] = DatasetScheme(name, usage, opener, summary)


def accepted_forms() -> list[str]:
    """Every spec form, for help texts and error messages."""
    return [scheme.usage for scheme in _SCHEMES.values()] + [
        "DIRECTORY (with images/ [and masks/] or images)"
    ]


def open_dataset(spec: str, role: str | None = None) -> SegmentationDataset:
    """Open the dataset that ``spec`` names.

    ``role`` (``train``, ``calib`` or ``eval``) only matters for specs that name no subset: ``demo``
    then means ``demo:<role>``; without a role it means all demo frames.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    spec = spec.strip()
    if not spec:
        raise SegcompileError(f"empty dataset spec; accepted forms: {_forms_text()}")
    scheme_name, has_argument, argument = spec.partition(":")
    scheme = _SCHEMES.get(scheme_name)
    if scheme is not None:
        return scheme.opener(argument if has_argument else "", role)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _open_directory(path, spec)
    if path.exists():
        raise SegcompileError(f"{spec}: is a file; a dataset is a folder or a spec ({_forms_text()})")
    if has_argument:
        raise SegcompileError(
            f"{spec}: unknown dataset scheme {scheme_name!r}; accepted forms: {_forms_text()}"
        )
    raise SegcompileError(f"{spec}: no such folder and not a dataset spec; accepted forms: {_forms_text()}")


def _forms_text() -> str:
    return ", ".join(accepted_forms())


def _open_directory(path: Path, spec: str) -> SegmentationDataset:
    images, masks = path / "images", path / "masks"
    if images.is_dir():
        return open_folder(images, masks if masks.is_dir() else None, spec=spec)
    return open_folder(path, None, spec=spec)


def _open_demo_spec(argument: str, role: str | None) -> SegmentationDataset:
    split = argument or role
    if split is not None and split not in DEMO_SPLITS:
        raise SegcompileError(f"demo:{argument}: unknown demo split; expected demo:{'|'.join(DEMO_SPLITS)}")
    return open_demo(split)


def _open_folder_spec(argument: str, role: str | None) -> SegmentationDataset:
    parts = argument.split(":")
    if not argument or len(parts) > 2 or not all(parts):
        raise SegcompileError(f"folder:{argument}: expected folder:IMAGES or folder:IMAGES:MASKS")
    images = Path(parts[0]).expanduser()
    masks = Path(parts[1]).expanduser() if len(parts) == 2 else None
    return open_folder(images, masks, spec=f"folder:{argument}")


register_scheme(
    "demo", f"demo[:{'|'.join(DEMO_SPLITS)}]", _open_demo_spec, "the bundled rendered demo scenes"
)
register_scheme("folder", "folder:IMAGES[:MASKS]", _open_folder_spec, "images, masks matched by file stem")
