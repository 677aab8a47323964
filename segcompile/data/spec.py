"""Dataset specs: the one string `--calib` / `--eval` take, and the single table of schemes it accepts.

Accepted: ``demo``, ``demo:train|calib|eval``, ``folder:IMAGES[:MASKS]``, a bare directory
(``images/`` and ``masks/`` inside it when present, else the directory itself as images without masks),
the standard layouts as they ship -- ``cityscapes:ROOT[:train|val|test]``, ``ade20k:ROOT[:train|val]``
(150 classes), ``ade20k32:ROOT[:train|val]`` (MLPerf's 32 classes), ``cocoseg21:ROOT[:train|val]``,
``voc2012:ROOT[:train|val|trainval]`` -- and ``subset:LISTFILE`` (frames pinned by a list file, see
:mod:`segcompile.data.subsets`). A new reader adds one :func:`register_scheme` line at the bottom.

Which frames a standard-layout spec without a split means depends on the role it is opened for:
``train`` -> the training split in file order; ``calib`` -> the training split in a seeded random
order (seed 0; quantize takes its first N frames, a random subset of N); ``eval`` or no role -> the
validation split in file order. So ``--calib cityscapes:ROOT --eval cityscapes:ROOT`` never calibrates
on an evaluation frame. A spec that names its split is read as named, in file order, for every role.

Frames a standard-layout reader cannot use (missing or mismatched mask, unreadable or oversized file)
are left out with one :class:`~segcompile.data.frames.SkippedFramesWarning` and listed in the dataset's
``skipped`` attribute; layout problems (no such folder, empty split, symlink loop, bad annotation file)
and label values outside the dataset's classes are a :class:`SegcompileError` naming the path.
``folder:`` and bare directories are strict: any bad frame is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segcompile.data.ade20k import open_ade20k32_spec, open_ade20k_spec
from segcompile.data.cityscapes import open_cityscapes_spec
from segcompile.data.coco import open_coco_spec
from segcompile.data.demo import DEMO_SPLITS, open_demo
from segcompile.data.folder import open_folder
from segcompile.data.frames import SegmentationDataset
from segcompile.data.subsets import open_subset_spec
from segcompile.data.voc import open_voc_spec
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
register_scheme("cityscapes", "cityscapes:ROOT[:train|val|test]", open_cityscapes_spec,
                "leftImg8bit + gtFine labelIds, 19 trainIds")
register_scheme("ade20k", "ade20k:ROOT[:train|val]", open_ade20k_spec, "ADEChallengeData2016, 150 classes")
register_scheme("ade20k32", "ade20k32:ROOT[:train|val]", open_ade20k32_spec,
                "ADEChallengeData2016, MLPerf's 32 classes")
register_scheme("cocoseg21", "cocoseg21:ROOT[:train|val]", open_coco_spec,
                "COCO images + instances json, the 21 VOC classes")
register_scheme("voc2012", "voc2012:ROOT[:train|val|trainval]", open_voc_spec,
                "JPEGImages + SegmentationClass palette PNGs")
register_scheme("subset", "subset:LISTFILE", open_subset_spec, "the frames a subset list file names")
