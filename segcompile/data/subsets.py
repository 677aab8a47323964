"""Seeded, disjoint selections of frames, and list files that pin a selection for reuse.

A subset is chosen by shuffling frame indices with ``numpy.random.default_rng(seed)`` (stable across
numpy versions and platforms) and keeping the first ``n`` that are not excluded, so the same dataset,
``n``, seed and exclusions always give the same frames, and a smaller ``n`` is a prefix of a larger one.

A list file (conventionally ``calibration/<name>.txt``) records one chosen selection::

    # segcompile subset
    # dataset: cityscapes:/data/cityscapes:train
    # seed: 0
    aachen_000000_000019
    ...

and ``subset:LISTFILE`` opens exactly those frames again, in that order (a relative path in the
``dataset`` line is relative to the working directory). ``segcompile subset SPEC --frames N`` writes one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from segcompile.data.frames import Frame, SegmentationDataset, SkippedFrame
from segcompile.errors import SegcompileError

# The seed a spec without a split uses to pick calibration frames from the training split.
CALIBRATION_SEED = 0
LIST_HEADER = "# segcompile subset"


class SubsetDataset(SegmentationDataset):
    """Some frames of another dataset, in a given order."""

    def __init__(self, base: SegmentationDataset, indices: Sequence[int], spec: str | None = None) -> None:
        size = len(base)
        for index in indices:
            if not 0 <= index < size:
                raise IndexError(f"{base.spec}: frame {index} out of range (0..{size - 1})")
        self.base = base
        self.indices = [int(index) for index in indices]
        self.spec = spec or base.spec
        self.class_names = base.class_names
        self.names = [base.names[index] for index in self.indices]

    @property
    def skipped(self) -> Sequence[SkippedFrame]:  # type: ignore[override]
        """What the underlying reader left out."""
        return base_skipped(self.base)

    def load(self, index: int) -> Frame:
        return self.base.load(self.indices[index])


def base_skipped(dataset: SegmentationDataset) -> Sequence[SkippedFrame]:
    """``dataset.skipped``, for readers that do not set it."""
    return getattr(dataset, "skipped", ())


def shuffled_indices(size: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(size)``."""
    return [int(index) for index in np.random.default_rng(seed).permutation(size)]


def select_subset(
    dataset: SegmentationDataset, n: int | None, seed: int, exclude: Iterable[str] = ()
) -> SubsetDataset:
    """``n`` frames of ``dataset`` picked at random with ``seed``, none of them named in ``exclude``.

    ``n=None`` keeps every frame that is not excluded (in seeded order). Asking for more frames than
    remain is a :class:`SegcompileError`, so an evaluation set is never silently smaller than requested.
    """
    excluded = set(exclude)
    order = [index for index in shuffled_indices(len(dataset), seed) if dataset.names[index] not in excluded]
    if n is not None:
        if n < 1:
            raise SegcompileError(f"{dataset.spec}: a subset needs at least 1 frame, not {n}")
        if n > len(order):
            raise SegcompileError(
                f"{dataset.spec}: asked for {n} frames but only {len(order)} are available"
                + (f" after excluding {len(excluded)}" if excluded else "")
            )
        order = order[:n]
    return SubsetDataset(dataset, order, spec=f"{dataset.spec} (seed {seed}, {len(order)} frames)")


def select_by_names(dataset: SegmentationDataset, names: Sequence[str], source: str) -> SubsetDataset:
    """The frames of ``dataset`` named in ``names``, in that order; ``source`` says where the list is from."""
    position = {name: index for index, name in enumerate(dataset.names)}
    missing = [name for name in names if name not in position]
    if missing:
        raise SegcompileError(
            f"{source}: {len(missing)} listed frame(s) are not in {dataset.spec}, e.g. {missing[0]!r}"
        )
    return SubsetDataset(dataset, [position[name] for name in names], spec=f"subset:{source}")


def write_subset_list(
    path: Path | str, names: Sequence[str], dataset_spec: str, seed: int | None = None
) -> Path:
    """Write ``names`` as a list file that ``subset:PATH`` reopens from ``dataset_spec``.

    The file is written to a temporary name and renamed, so a crash never leaves half a list.
    """
    path = Path(path)
    if not names:
        raise SegcompileError(f"{path}: refusing to write an empty subset list")
    for name in names:
        if not name or name != name.strip() or "\n" in name or name.startswith("#"):
            raise SegcompileError(f"{path}: frame name {name!r} cannot be stored in a list file")
    if len(set(names)) != len(names):
        raise SegcompileError(f"{path}: the subset names a frame twice")
    lines = [LIST_HEADER, f"# dataset: {dataset_spec}"]
    if seed is not None:
        lines.append(f"# seed: {seed}")
    text = "\n".join([*lines, *names]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def read_subset_list(path: Path | str) -> tuple[str, list[str]]:
    """(dataset spec, frame names) of a list file written by :func:`write_subset_list`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SegcompileError(f"{path}: subset list not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SegcompileError(f"{path}: unreadable subset list ({exc})") from exc
    dataset_spec = None
    names: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "dataset" and value.strip():
                dataset_spec = value.strip()
        elif line:
            names.append(line)
    if dataset_spec is None:
        raise SegcompileError(f"{path}: subset list has no '# dataset: SPEC' line (where its frames are)")
    if not names:
        raise SegcompileError(f"{path}: subset list names no frames")
    if len(set(names)) != len(names):
        raise SegcompileError(f"{path}: subset list names a frame twice")
    return dataset_spec, names


def open_subset_spec(argument: str, role: str | None) -> SegmentationDataset:
    """Open ``subset:LISTFILE``: the frames a list file names, from the dataset its header names."""
    from segcompile.data.spec import open_dataset  # spec.py registers this scheme, so import late

    if not argument:
        raise SegcompileError("subset: expected subset:LISTFILE")
    path = Path(argument).expanduser()
    dataset_spec, names = read_subset_list(path)
    if dataset_spec.startswith("subset:"):
        raise SegcompileError(f"{path}: a subset list cannot point at another subset list")
    return select_by_names(open_dataset(dataset_spec, role=role), names, str(path))


def split_for_role(
    reader: str, split: str | None, role: str | None, train_split: str, eval_split: str
) -> tuple[str, bool]:
    """(split to read, whether to shuffle it for calibration) for a spec that may name no split.

    The rule every standard-layout reader follows: an explicit split is read as named, in file order;
    otherwise ``train`` reads the training split, ``calib`` a seeded shuffle of the training split
    (quantize takes its first N frames, i.e. a random subset of N), and ``eval`` or no role the
    validation split, so calibration and evaluation frames never overlap by default.
    """
    if split:
        return split, False
    if role in ("train", "calib"):
        return train_split, role == "calib"
    return eval_split, False


def for_role(dataset: SegmentationDataset, shuffle: bool, spec: str) -> SegmentationDataset:
    """``dataset`` itself, or its seeded calibration order when ``shuffle`` is set.

    ``spec`` is what the user wrote; the shuffled set keeps it, since reopening that spec for
    calibration gives the same order again.
    """
    if not shuffle:
        return dataset
    return SubsetDataset(dataset, shuffled_indices(len(dataset), CALIBRATION_SEED), spec=spec)


def parse_root_and_split(scheme: str, argument: str, splits: Sequence[str]) -> tuple[Path, str | None]:
    """``ROOT[:split]`` -> (root, split or None); the split is recognised by name so ROOT may hold ':'."""
    root, colon, last = argument.rpartition(":")
    if colon and last in splits:
        path, split = root, last
    elif colon and root and Path(root).expanduser().is_dir() and not Path(argument).expanduser().exists():
        raise SegcompileError(
            f"{scheme}:{argument}: unknown split {last!r}; expected one of {', '.join(splits)}"
        )
    else:
        path, split = argument, None
    if not path:
        raise SegcompileError(f"{scheme}:{argument}: expected {scheme}:ROOT[:{'|'.join(splits)}]")
    return Path(path).expanduser(), split


def pinned_spec(dataset: SegmentationDataset) -> str:
    """A spec naming the split ``dataset``'s frames come from, whatever role reopens it.

    Readers record the split they chose in ``spec``; a calibration-ordered set wraps such a reader.
    """
    while isinstance(dataset, SubsetDataset) and not dataset.spec.startswith("subset:"):
        dataset = dataset.base
    if dataset.spec.startswith("subset:"):
        raise SegcompileError(f"{dataset.spec}: already a subset list; select from its dataset instead")
    return dataset.spec
