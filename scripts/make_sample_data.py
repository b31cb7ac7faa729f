"""Write small synthetic datasets in the QaTa-COV19, MosMedData+, Kvasir-SEG and BKAI-IGH layouts,
synthetic CT volumes with lesions turned into referring records (``refct``, for LSMS),
PanNuke-style folds (``pannuke``, for MONCH) and PUMA-style H&E ROIs with tissue and nuclei GeoJSON
(``puma``, for Co-Seg) and BCSS-style H&E ROIs with integer-coded tissue masks (``bcss``, for LTSE).

The prompt of each image names one of its two or three blobs by size and
position and the mask holds only that one, so a model must read the text to
score well.

    python scripts/make_sample_data.py --out_dir sample_data                # all four, 60 images each
    python scripts/make_sample_data.py --out_dir sample_data --datasets kvasir --n 200 --size 128
    python scripts/make_sample_data.py --out_dir sample_data --datasets refct --n 24   # n CT volumes
    python scripts/make_sample_data.py --out_dir sample_data --datasets pannuke --n 96 --size 64   # n patches per fold
    python scripts/make_sample_data.py --out_dir sample_data --datasets puma --n 48 --size 128     # n ROIs
    python scripts/make_sample_data.py --out_dir sample_data --datasets bcss --n 20 --size 128     # n ROIs
      (then scripts/build_bcss_ref.py --bcss_dir sample_data/BCSS --out_dir sample_data/BCSS-Ref --patch_size 64)
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

from transforms.base.describe import typed
from common.core.flags import check_choice, check_range
from common.data.bcss.synthetic import write_sample_bcss
from common.data.pannuke.synthetic import write_sample_pannuke
from common.data.puma.synthetic import write_sample_puma
from common.data.referring_ct.synthetic import ensure_sample_referring_ct
from common.data.synthetic.sample_datasets import DATASETS, write_sample_dataset


KNOWN = (*DATASETS, "refct", "pannuke", "puma", "bcss")
# below 32 px the smallest blobs vanish: BKAI-IGH's JPEG colour masks come out empty (1 in 720 at 24 px),
# QaTa-COV19's below 12 px
MIN_SIZE = 32
MIN_IMAGES = 5  # qata, mosmed, kvasir, bkai: every split needs an image


def check_arguments(names: list[str], n: int, size: int) -> None:
    """Refuse an unknown dataset name, too few samples or too small images before anything is written."""
    for name in names:
        check_choice("datasets", name, KNOWN, "a dataset this tool writes")
    check_range("n", n, MIN_IMAGES if set(names) & set(DATASETS) else 1)
    check_range("size", size, MIN_SIZE)


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(out_dir: str = "sample_data", datasets=DATASETS, n: int = 60, size: int = 128, seed: int = 0) -> None:
    """Write ``n`` images (``refct``: ``n`` volumes; ``pannuke``: ``n`` patches per fold; ``puma``, ``bcss``: ``n`` ROIs) of each dataset in ``datasets`` (one name or a list) under ``out_dir``."""
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    check_arguments(names, n, size)
    for i, name in enumerate(names):
        if name == "refct":
            path = ensure_sample_referring_ct(out_dir, n_cases=n, size=size, seed=seed + i)
            print(f"refct: {n} CT volumes of {size}x{size}x16 and their referring records in {path}")
            continue
        if name == "pannuke":
            path = write_sample_pannuke(out_dir, n_per_fold=n, size=size, seed=seed + i)
            print(f"pannuke: 3 folds of {n} patches of {size}x{size} in {path}")
            continue
        if name == "bcss":
            path = write_sample_bcss(out_dir, n=n, size=size, seed=seed + i)
            print(f"bcss: {n} H&E ROIs of {size}x{size} with tissue masks and gtruth_codes.tsv in {path}")
            continue
        if name == "puma":
            path = write_sample_puma(out_dir, n=n, size=size, seed=seed + i)
            print(f"puma: {n} H&E ROIs of {size}x{size} with tissue and nuclei GeoJSON in {path}")
            continue
        path = write_sample_dataset(name, out_dir, n=n, size=size, seed=seed + i)
        print(f"{name}: {n} images of {size}x{size} in {path}")


if __name__ == "__main__":
    _repo.run_cli(main)
