"""Kedro dataset for a folder of images (COCO train2014, the embedded world, noisy images)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from PIL import Image

from povid_kedro.ingest.images import ImageFolder, write_images


class ImageFolderDataset(
    AbstractDataset[Mapping[str, Image.Image | Callable[[], Image.Image]], ImageFolder]
):
    """A folder of image files addressed by relative paths.

    ``load`` returns an :class:`~povid_kedro.ingest.images.ImageFolder` (a lazy, read-only view:
    nothing is decoded until a node opens an image); ``save`` takes a mapping of relative
    path to PIL image (or to a zero-argument callable that makes it, run by the process that
    writes it) and writes each file, the format following the suffix.

    Example::

        world_train_images:
          type: povid_kedro.datasets.image_folder.ImageFolderDataset
          path: data/01_raw/world/train2014

    Args:
        path: The folder.
        overwrite: Remove the folder before saving, so no stale image survives a rerun.
    """

    def __init__(self, path: str, overwrite: bool = True, metadata: dict | None = None) -> None:
        self._path = Path(path)
        self._overwrite = overwrite
        self.metadata = metadata

    def load(self) -> ImageFolder:
        if not self._path.is_dir():
            raise DatasetError(
                f"image folder {self._path} does not exist: create it (for the embedded "
                "default run `kedro run --pipeline embedded_world`) or point the catalog at it"
            )
        return ImageFolder(self._path)

    def save(self, data: Mapping[str, Image.Image | Callable[[], Image.Image]]) -> None:
        if self._overwrite and self._path.exists():
            shutil.rmtree(self._path)
        write_images(self._path, data)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "overwrite": self._overwrite}
