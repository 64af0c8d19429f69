"""``DIR/<class>/<file>`` images (Keras's ``image_dataset_from_directory``
convention) -> one h5feed file.

Class names are the sorted names of DIR's subfolders, and each class's images
are found at any depth below its folder, as Keras does. A sample's ID is its
path relative to DIR (with ``/``), so it can be found again. Images are
decoded with Pillow (the ``images`` extra), converted to the colour mode,
resized to ``size`` with a bilinear filter, and stored as ``uint8`` rows of
shape ``(H, W, C)``: a quarter of float32's size; scale them in the model
(``keras.layers.Rescaling(1 / 255)``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from h5feed.errors import SourceError

from ._common import (
    ConversionResult,
    Options,
    block_rows,
    check_weights,
    load_weights,
    ordered_map,
    write_dataset,
)

__all__ = ["COLOR_MODES", "IMAGE_EXTENSIONS", "from_image_dir", "list_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# colour mode -> (Pillow mode, channels)
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}

def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "converting images needs Pillow; install it with: pip install 'h5feed[images]'"
        ) from None
    # Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS) stays as
    # the user set it; an image over it is reported like any bad image.
    return Image


def list_images(folder: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names and ``(relative path, class index)`` of every image.

    Class folders are sorted; within one, files are sorted by relative path.
    Files directly in ``folder`` and files of other types are ignored, as in
    Keras; so are hidden folders and files (``.ipynb_checkpoints``, ``._x.jpg``
    from macOS), which Keras would take as a class or an image.

    Raises:
        SourceError: ``folder`` is missing, has no class subfolders, or no
            images at all.
    """
    if not os.path.isdir(folder):
        raise SourceError(f"{folder}: no such folder (expected DIR/<class>/<image>)")
    with os.scandir(folder) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise SourceError(f"{folder}: no class subfolders (expected DIR/<class>/<image>; an empty source)")
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        found = []
        # Symbolic links to folders are not followed (Keras's default), which
        # also keeps a link loop from walking forever.
        for root, dirs, names in os.walk(os.path.join(folder, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in names:
                if fname.lower().endswith(IMAGE_EXTENSIONS) and not fname.startswith("."):
                    rel = os.path.relpath(os.path.join(root, fname), folder)
                    found.append(rel.replace(os.sep, "/"))
        samples.extend((rel, index) for rel in sorted(found))
    if not samples:
        raise SourceError(
            f"{folder}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in its {len(classes)} class folder(s) "
            "(an empty source)"
        )
    return classes, samples


@dataclass(frozen=True)
class _Task:
    folder: str
    ids: tuple[str, ...]
    size: tuple[int, int]
    mode: str


def decode_image(path: str, size: tuple[int, int], mode: str, where: str) -> np.ndarray:
    """One image as ``uint8`` ``(H, W, C)``, converted to ``mode`` and resized.

    Raises:
        SourceError: the file is not an image Pillow can decode, or truncated.
    """
    image_mod = _pil()
    height, width = size
    pil_mode, channels = COLOR_MODES[mode]
    try:
        with image_mod.open(path) as im:
            # The first frame of an animated GIF; an image already in the
            # mode is only loaded, not copied.
            im = im.convert(pil_mode) if im.mode != pil_mode else im
            im.load()
            if im.size != (width, height):
                im = im.resize((width, height), image_mod.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as exc:
        raise SourceError(f"{where}: cannot decode the image: {exc}") from exc
    return arr.reshape(height, width, channels)


def _decode_block(task: _Task) -> np.ndarray:
    """Decode the task's images into one block (runs in workers)."""
    channels = COLOR_MODES[task.mode][1]
    out = np.empty((len(task.ids), *task.size, channels), dtype=np.uint8)
    for i, sid in enumerate(task.ids):
        path = os.path.join(task.folder, *sid.split("/"))
        out[i] = decode_image(path, task.size, task.mode, f"{path} (sample {sid!r})")
    return out


def _split_rows(folder: str, n: int, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras's rule: shuffle with ``seed``, the last ``int(f * n)`` are validation."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(validation_split * n)
    if n_val == 0 or n_val == n:
        raise SourceError(
            f"{folder}: validation_split={validation_split!r} of {n} images leaves "
            f"{'no validation' if n_val == 0 else 'no training'} images"
        )
    return np.sort(order[: n - n_val]), np.sort(order[n - n_val :])


def _normalize_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width). Received: {size!r}") from None
    if h < 1 or w < 1 or any(isinstance(v, bool) for v in size):
        raise ValueError(f"size must be two positive ints (height, width). Received: {size!r}")
    return h, w


def from_image_dir(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    size: Sequence[int],
    color: str = "rgb",
    validation_split: float | None = None,
    compression: str | None = None,
    chunk_rows: int | None = None,
    shuffle_rows: bool = False,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    checksum: bool = False,
    quiet: bool = True,
    progress: Any = None,
    shard: tuple[int, int] | str | None = None,
    metadata: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    append_to: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Convert ``folder/<class>/<image>`` into one labelled h5feed file.

    Args:
        folder: the folder of class subfolders.
        out: the h5feed file to write (or give ``append_to``).
        size: ``(height, width)`` every image is resized to.
        color: ``"rgb"`` (3 channels), ``"grayscale"`` (1) or ``"rgba"`` (4).
        validation_split: a fraction in (0, 1): write ``train`` and
            ``validation`` splits, drawing the validation images with
            ``seed`` (the last ``int(f * N)`` of a seeded shuffle, Keras's
            rule). None writes no splits.
        compression, chunk_rows, shuffle_rows, seed, workers, overwrite,
        checksum, quiet, progress, shard, metadata, append_to: as for
            :func:`~h5feed.convert.from_npy_dir`. ``seed`` also draws the
            validation split.
        weights: per-image weights ``{ID: weight}``, where an image's ID is
            its path below ``folder`` (``"cat/001.jpg"``), as for
            :func:`~h5feed.convert.from_npy_dir`.

    Returns:
        A :class:`ConversionResult`. The file stores ``class_names``.

    Raises:
        ImportError: Pillow is not installed.
        SourceError: no class folders or images, an image that does not
            decode, or weights that do not cover the images exactly.
    """
    options = Options(compression=compression, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, seed=seed,
                      workers=workers, overwrite=overwrite, checksum=checksum, quiet=quiet, progress=progress,
                      shard=shard, metadata=metadata, append_to=append_to)
    folder = os.fspath(folder)
    hw = _normalize_size(size)
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {sorted(COLOR_MODES)!r}. Received: {color!r}")
    if validation_split is not None and (
        isinstance(validation_split, bool) or not isinstance(validation_split, (int, float))
        or not 0 < validation_split < 1
    ):
        raise ValueError(f"validation_split must be a fraction between 0 and 1. Received: {validation_split!r}")
    out = options.output(out)
    _pil()  # fail before listing a big folder
    classes, samples = list_images(folder)
    weight_map = None
    if weights is not None:
        weights_where, weight_map = load_weights(weights)
        check_weights(weights_where, weight_map, [s[0] for s in samples], folder)
    splits: dict[str, list[str]] = {}
    if validation_split is not None:
        train, val = _split_rows(folder, len(samples), float(validation_split), seed)
        splits = {"train": [samples[i][0] for i in train.tolist()],
                  "validation": [samples[i][0] for i in val.tolist()]}
    order = options.select([s[0] for s in samples], folder).tolist()
    ids = [samples[i][0] for i in order]
    y = np.array([samples[i][1] for i in order], dtype=np.int64)
    channels = COLOR_MODES[color][1]
    step = block_rows(hw[0] * hw[1] * channels)
    # Image decoding costs far more per row than copying: smaller blocks keep
    # the workers evenly busy.
    step = max(1, min(step, 64))

    def tasks() -> Iterator[_Task]:
        for start in range(0, len(ids), step):
            yield _Task(folder, tuple(ids[start : start + step]), hw, color)

    def blocks() -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        decoded = ordered_map(_decode_block, tasks(), workers=options.workers)
        start = 0
        try:
            for block in decoded:
                k = block.shape[0]
                yield ids[start : start + k], block, y[start : start + k]
                start += k
        finally:
            decoded.close()

    return write_dataset(
        out, blocks(), options=options, n_rows=len(ids), sample_shape=(*hw, channels), dtype=np.uint8,
        target_dtype=np.int64, n_classes=len(classes), class_names=classes, splits=splits,
        weights=weight_map, label=f"converting {folder}",
    )
