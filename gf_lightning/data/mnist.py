"""MNIST as in SPEC §3: pixels / 255, flattened; a seeded 8000 / 2000 subsample of the train / test files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import GFConfigError
from .base import TensorDataModule

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: the IDX magic numbers (0x00000803: unsigned bytes, three dimensions; 0x00000801: one) and header lengths
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FIX_HINT = "re-download it (data.download=true) or point data.data_dir at a folder with the intact files"


def _idx_count(path: Path, images: bool) -> int:
    """The item count of one IDX file, after checking its magic number, its header, its size and (labels) its values;
    a ``GFConfigError`` naming the file otherwise. Reads the header and, for labels, the labels (60 kB)."""
    magic_want, header = (IMAGES_MAGIC, 16) if images else (LABELS_MAGIC, 8)
    kind = "images" if images else "labels"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(header)
        if len(head) < header:
            raise GFConfigError(
                f"MNIST file {path} is {'empty' if size == 0 else f'truncated ({size} bytes)'}: an IDX {kind} file "
                "starts "
                f"with a {header}-byte header; {FIX_HINT}"
            )
        magic, count = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:8], "big")
        if magic != magic_want:
            raise GFConfigError(
                f"MNIST file {path} has magic number {magic} (0x{magic:08x}); an uncompressed IDX {kind} file has "
                f"{magic_want} (0x{magic_want:08x}) (a .gz file must be unpacked); {FIX_HINT}"
            )
        item = 1
        if images:
            rows, cols = int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
            if (rows, cols) != (28, 28):
                raise GFConfigError(
                    f"MNIST file {path} holds images of {rows} x {cols} pixels; allowed: 28 x 28; {FIX_HINT}"
                )
            item = 28 * 28
        want = header + count * item
        if size != want:
            raise GFConfigError(
                f"MNIST file {path} is {size} bytes, but its header announces {count} {kind}, which take {want} bytes "
                f"({'truncated' if size < want else 'trailing data'}); {FIX_HINT}"
            )
        if not images and count:
            top = max(f.read())
            if top > 9:
                raise GFConfigError(f"MNIST file {path} holds the label {top}; allowed: 0 … 9; {FIX_HINT}")
    return count


class MNISTDataModule(TensorDataModule):
    """MNIST digits through ``torchvision.datasets.MNIST``, held in memory as ``(N, 784)`` float32 in ``[0, 1]``.

    Args:
        data_dir: the folder that holds (or will hold) ``MNIST/raw/`` with the four uncompressed IDX files.
        download: fetch the files when they are missing (needs the internet).
        n_train, n_test: the subsample sizes, drawn without replacement with ``seed`` (the seed: 8000 and 2000).
        batch_size, eval_batch_size, seed, steps_per_call: see :class:`TensorDataModule`.
    """

    task = "classification"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        n_train: int = 8000,
        n_test: int = 2000,
        batch_size: int | None = 256,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, steps_per_call=steps_per_call
        )
        for name, value in (("n_train", n_train), ("n_test", n_test)):
            if not isinstance(value, int) or value <= 0:
                raise GFConfigError(f"data.{name} must be a positive integer; got {value!r}")
        self.data_dir, self.download = str(data_dir), download
        self.n_train, self.n_test = n_train, n_test

    @property
    def dims(self) -> tuple[int, int]:
        return 784, 10

    def _check_files(self) -> None:
        raw = Path(self.data_dir) / "MNIST" / "raw"
        missing = [f for f in RAW_FILES if not (raw / f).is_file()]
        if missing and not self.download:
            raise FileNotFoundError(
                f"MNIST files missing with data.download=false: the folder {raw} must hold the four uncompressed IDX "
                "files "
                f"{', '.join(RAW_FILES)} (missing: {', '.join(missing)}). Point data.data_dir at the folder that "
                "contains "
                "MNIST/raw/, or set data.download=true where the internet can be reached."
            )
        if not missing:
            self._check_headers(raw)

    @staticmethod
    def _check_headers(raw: Path) -> None:
        """Each IDX file's magic number, size and count, and as many labels as images in each split: a t10k labels file
        under the train name would otherwise train on labels that belong to other images."""
        for prefix in ("train", "t10k"):
            images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
            n_images, n_labels = _idx_count(images, images=True), _idx_count(labels, images=False)
            if n_images != n_labels:
                raise GFConfigError(
                    f"MNIST file {labels} holds {n_labels} labels but {images.name} holds {n_images} images; each "
                    "image "
                    f"needs its own label (files of another split under this name?); {FIX_HINT}"
                )

    def prepare_data(self) -> None:
        self._check_files()
        if self.download:
            from torchvision.datasets import MNIST

            for train in (True, False):
                MNIST(self.data_dir, train=train, download=True)

    def build(self) -> dict[str, Tensor]:
        from torchvision.datasets import MNIST

        self._check_files()
        gen = torch.Generator().manual_seed(self.seed)
        out = {}
        for split, train, n in (("train", True, self.n_train), ("test", False, self.n_test)):
            ds = MNIST(self.data_dir, train=train, download=False)
            if n > len(ds.targets):
                raise GFConfigError(f"data.n_{split} ({n}) exceeds the {len(ds.targets)} MNIST {split} images")
            idx = torch.randperm(len(ds.targets), generator=gen)[:n]
            out[f"x_{split}"] = ds.data[idx].reshape(n, -1).float().div_(255.0)
            out[f"y_{split}"] = ds.targets[idx].long()
        return out
