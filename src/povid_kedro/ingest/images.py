"""A folder of images addressed by paths relative to its root.

Records (LLaVA-Instruct, POVID preference data, COCO) name images by relative paths;
this module resolves them safely and opens them fully, so that corrupt files fail here
with the path in the message rather than later inside a model's image processor.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from povid_kedro.parallel import process_map

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# zlib's run-length strategy at level 1: on the world's and the noise trigger's grainy images as
# small as the default (18.6 KB for a 96 px world image) in two thirds of the time (0.97 ms
# against 1.44); PNG's row filters do the rest.
_PNG_OPTIONS = {"compress_level": 1, "compress_type": 3}


class ImagePathError(ValueError):
    """An image path that is absolute or leaves the image root."""


class ImageReadError(OSError):
    """An image file that is missing, unreadable or corrupt."""


def normalize_relpath(relpath: str) -> str:
    """Normalise a record's image path, refusing paths outside the root.

    Args:
        relpath: Path as written in the record, relative to the image root.

    Returns:
        The normalised POSIX relative path.

    Raises:
        ImagePathError: If the path is empty, absolute, or climbs out of the root.
    """
    if not isinstance(relpath, str) or not relpath.strip():
        raise ImagePathError("empty image path")
    posix = relpath.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise ImagePathError(f"image path {relpath!r} is absolute; give it relative to the root")
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../"):
        raise ImagePathError(f"image path {relpath!r} escapes the image root")
    return norm


class ImageFolder(Mapping[str, Path]):
    """Read-only view of an image folder: relative path -> file path.

    Args:
        root: The folder that record image paths are relative to.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, relpath: str) -> Path:
        """Absolute path of a record's image, checked to stay inside the root.

        Symbolic links are resolved too, so a link pointing outside the root is refused.
        """
        norm = normalize_relpath(relpath)
        root = self.root.resolve()
        target = (root / norm).resolve()
        if target != root and root not in target.parents:
            raise ImagePathError(f"image path {relpath!r} escapes the image root")
        return target

    def open(self, relpath: str) -> Image.Image:
        """Open and fully decode one image.

        Raises:
            ImagePathError: For a path outside the root.
            ImageReadError: For a missing, unreadable or corrupt file.
        """
        target = self.path(relpath)
        if not target.is_file():
            raise ImageReadError(f"image {relpath!r} not found under {self.root}")
        try:
            data = target.read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: truncated files fail here, not downstream
        except UnidentifiedImageError as err:  # its text names the in-memory buffer's address
            raise ImageReadError(
                f"image {relpath!r} cannot be decoded: not an image format Pillow can read"
            ) from err
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"image {relpath!r} cannot be decoded: {err}") from err
        return image

    def read_bytes(self, relpath: str) -> bytes:
        """Raw file content (for hashing or sending to an API)."""
        return self.path(relpath).read_bytes()

    # Mapping protocol over the files present, so the folder can be listed and counted.
    def __getitem__(self, relpath: str) -> Path:
        target = self.path(relpath)
        if not target.is_file():
            raise KeyError(relpath)
        return target

    def __iter__(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield Path(dirpath, name).relative_to(self.root).as_posix()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, relpath: object) -> bool:
        try:
            return isinstance(relpath, str) and self.path(relpath).is_file()
        except ImagePathError:
            return False

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r})"


class EncodedImages(Mapping[str, Image.Image]):
    """Images held as their files' bytes (relative path -> content in the format its suffix
    names): what a process pool hands back cheaply, and what :func:`write_images` writes as
    they are. Reading an image decodes it.

    Args:
        files: Relative path -> encoded file content.
    """

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)

    def __getitem__(self, relpath: str) -> Image.Image:
        image = Image.open(io.BytesIO(self.files[relpath]))
        image.load()
        return image

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def write_images(
    root: str | os.PathLike[str],
    images: Mapping[str, Image.Image | Callable[[], Image.Image]],
    workers: int | None = None,
) -> None:
    """Write images under ``root``; the format follows each name's suffix.

    PNG output is byte-identical for identical pixels, which keeps generated data
    reproducible. Encoding holds the GIL, so many images are written by ``workers`` processes
    (default: the CPUs this process may use). A value may be a picklable zero-argument callable
    that makes the image (as Kedro's ``PartitionedDataset`` saves lazily): it runs in the
    worker that writes it, so making the images is spread over the workers too.
    :class:`EncodedImages` are written as they are.
    """
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    jobs = []
    for relpath, image in (
        images.files.items() if isinstance(images, EncodedImages) else images.items()
    ):
        normalize_relpath(relpath)
        target = root_path / relpath
        fmt = Image.registered_extensions().get(target.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the image format of {relpath!r} from its suffix")
        jobs.append((target, fmt, image))
    if isinstance(images, EncodedImages):
        for job in jobs:
            _write_image(job)
    else:
        process_map(_write_image, jobs, workers=workers)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """The file content of ``image`` in Pillow's format ``fmt``: the same bytes for the same
    pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **(_PNG_OPTIONS if fmt == "PNG" else {}))
    return buffer.getvalue()


def _write_image(
    job: tuple[Path, str, Image.Image | Callable[[], Image.Image] | bytes],
) -> None:
    target, fmt, image = job
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if callable(image):
        image = image()
    tmp.write_bytes(image if isinstance(image, bytes) else encode_image(image, fmt))
    os.replace(tmp, target)
