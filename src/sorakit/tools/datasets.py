"""Class-labelled datasets as CSVs (`path`, `text`, `label`): UCF101 for video, ImageNet for images.

These are the datasets Open-Sora's docs use for the class-conditional DiT/Latte baselines. Both come as
one folder per class; labels are the class indices in sorted folder order (torchvision's ImageFolder
order, which the official ImageNet class indices also follow), unless UCF101's own `classInd.txt` is
found, whose 1-based indices are used minus one.
"""

from __future__ import annotations

import re
from pathlib import Path

from sorakit.errors import UserError
from sorakit.tools._io import IMAGE_EXTS, VIDEO_EXTS, Row


def camel_to_words(name: str) -> str:
    """UCF101 class folder names are CamelCase: "ApplyEyeMakeup" -> "apply eye makeup"."""
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|$)|[A-Z]?[a-z]+|[A-Z]+|\d+", name)
    return " ".join(w.lower() for w in words) if words else name


def _class_folders(root: Path, exts: tuple[str, ...]) -> list[tuple[str, list[Path]]]:
    """(class name, sorted files) for every direct subfolder of `root` holding files with `exts`."""
    classes = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        if files:
            classes.append((d.name, files))
    return classes


def _find_file(root: Path, names: tuple[str, ...]) -> Path | None:
    for base in (root, root.parent):
        for n in names:
            for cand in (base / n, base / "ucfTrainTestlist" / n):
                if cand.is_file():
                    return cand
    return None


def ucf101_rows(root: str | Path, split_file: str | Path | None = None, raw_names: bool = False) -> list[Row]:
    """Rows for UCF101 (`ROOT/<Class>/v_<Class>_gNN_cNN.avi`, or `ROOT/UCF-101/...`).

    `split_file`: an official list (`trainlist01.txt`, `testlist01.txt`: lines `Class/v_....avi [label]`)
    restricting the rows to that split; a listed video missing on disk is a UserError.
    `text` is the class name in words ("apply eye makeup") unless `raw_names`.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"UCF101 root not found: {root}")
    if (root / "UCF-101").is_dir():
        root = root / "UCF-101"
    classes = _class_folders(root, VIDEO_EXTS)
    if not classes:
        raise UserError(f"no class folders with videos under {root} (expected ROOT/<Class>/*.avi)")
    names = [c for c, _ in classes]
    label_of = {c: i for i, c in enumerate(names)}
    ind = _find_file(root, ("classInd.txt",))
    if ind is not None:
        label_of = {}
        for line in ind.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                label_of[parts[1]] = int(parts[0]) - 1
        unknown = [c for c in names if c not in label_of]
        if unknown:
            raise UserError(f"{ind} does not list the class folders {', '.join(unknown[:5])}")
    files_by_class = dict(classes)
    if split_file is not None:
        sf = Path(split_file).expanduser()
        if not sf.is_file():
            raise UserError(f"split file not found: {sf}")
        wanted: list[tuple[str, Path]] = []
        missing = []
        for line in sf.read_text().splitlines():
            if not line.strip():
                continue
            rel = line.split()[0].replace("\\", "/")
            cls = rel.split("/")[0]
            path = root / rel
            if not path.is_file():
                missing.append(rel)
            wanted.append((cls, path))
        if missing:
            raise UserError(f"{len(missing)} videos of {sf.name} are missing under {root}, e.g. {missing[0]}")
        pairs = wanted
    else:
        pairs = [(c, f) for c in names for f in files_by_class[c]]
    rows = []
    for cls, path in pairs:
        if cls not in label_of:
            raise UserError(f"class {cls!r} of {path.name} is not a class folder under {root}")
        rows.append(
            {
                "path": str(path),
                "text": cls if raw_names else camel_to_words(cls),
                "label": str(label_of[cls]),
            }
        )
    return rows


def read_class_names(path: Path) -> dict[str, str]:
    """`wnid name, synonyms` per line (LOC_synset_mapping.txt / synset_words.txt) -> {wnid: "name, synonyms"}."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            out[parts[0]] = parts[1].strip()
    return out


def imagenet_rows(
    root: str | Path,
    split: str = "train",
    class_names: str | Path | None = None,
    first_name_only: bool = True,
) -> list[Row]:
    """Rows for ImageNet in its folder layout (`ROOT/<split>/<wnid>/*.JPEG`, or `ROOT/<wnid>/...`).

    Labels are indices of the sorted wnids (the standard 0..999 order). `text` is the class name from
    `class_names` (or a `LOC_synset_mapping.txt` / `synset_words.txt` found next to the data), its first
    synonym only unless `first_name_only=False`; without a names file it is the wnid.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"ImageNet root not found: {root}")
    data = root / split if (root / split).is_dir() else root
    if data == root and any((root / s).is_dir() for s in ("train", "val", "test")):
        raise UserError(
            f"no {split!r} folder under {root}; its split folders are "
            + ", ".join(s for s in ("train", "val", "test") if (root / s).is_dir())
        )
    classes = _class_folders(data, IMAGE_EXTS)
    if not classes:
        raise UserError(
            f"no class folders with images under {data} (expected <split>/<wnid>/*.JPEG; the raw "
            "validation folder must first be sorted into class folders)"
        )
    names: dict[str, str] = {}
    names_file = (
        Path(class_names).expanduser()
        if class_names
        else _find_file(root, ("LOC_synset_mapping.txt", "synset_words.txt"))
    )
    if class_names and not names_file.is_file():  # type: ignore[union-attr]
        raise UserError(f"class names file not found: {class_names}")
    if names_file is not None:
        names = read_class_names(names_file)
    rows = []
    for label, (wnid, files) in enumerate(classes):
        text = names.get(wnid, wnid)
        if first_name_only:
            text = text.split(",")[0].strip()
        rows.extend({"path": str(f), "text": text, "label": str(label)} for f in files)
    return rows
