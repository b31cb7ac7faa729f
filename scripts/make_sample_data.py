"""Write small synthetic datasets in the QaTa-COV19, MosMedData+, Kvasir-SEG and BKAI-IGH layouts.

The prompt of each image names one of its two or three blobs by size and
position and the mask holds only that one, so a model must read the text to
score well.

    python scripts/make_sample_data.py --out_dir sample_data                # all four, 60 images each
    python scripts/make_sample_data.py --out_dir sample_data --datasets kvasir --n 200 --size 128
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)
import fire

from common.sample_datasets import DATASETS, write_sample_dataset


def main(out_dir: str = "sample_data", datasets=DATASETS, n: int = 60, size: int = 128, seed: int = 0) -> None:
    """Write ``n`` images of each dataset in ``datasets`` (one name or a list) under ``out_dir``."""
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    for i, name in enumerate(names):
        path = write_sample_dataset(name, out_dir, n=n, size=size, seed=seed + i)
        print(f"{name}: {n} images of {size}x{size} in {path}")


if __name__ == "__main__":
    fire.Fire(main)
