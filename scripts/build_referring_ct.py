"""Build a referring-lesion dataset (JSONL records, see common/referring_ct.py) from CT + lesion labels.

    # lesion-instance maps (every non-zero value is one lesion)
    python scripts/build_referring_ct.py --ct /data/ct --labels /data/lesions --out_dir /data/refct --lesion_values all
    python scripts/build_referring_ct.py --pairs pairs.csv --out_dir /data/refct --lesion_values all  # ct,label[,case]
    # LiTS (1 liver, 2 tumour): volume-N.nii / segmentation-N.nii pair by their names (one folder, or
    # --labels for the segmentation folder); split the tumour voxels into 3-D connected lesions
    python scripts/build_referring_ct.py --ct /data/LiTS/train --out_dir /data/refct \
        --lesion_values "[2]" --connected_components true
    # KiTS-style case folders (case_00000/imaging.nii.gz, .../segmentation.nii.gz): a pairs CSV
    python scripts/build_referring_ct.py --pairs kits.csv --out_dir /data/refct \
        --lesion_values "[2]" --connected_components true

Volumes are read from single files through MONAI (nibabel for NIfTI, ITK for MHA/NRRD) and
reoriented to RAS; DICOM series are not read (convert each to NIfTI first, e.g. with dcm2niix).
Without --connected_components every lesion value is one lesion: a value that holds separate
tumours is named in a warning. For every axial slice that contains lesions it
writes the windowed slice and its lesion-id map as PNGs (``--output_format png``,
the default) or refers to the volumes themselves (``volume``), and one record per
lesion whose text names its size rank, side and diameter. Cases are split into
train/val/test by patient. Train LSMS on the result with
``--dataset_format refct --dataset_dir <out_dir>``.

``out_dir`` must be new or empty (``--overwrite true`` replaces what an earlier run wrote there); the
dataset is written beside it and takes its name only when complete, so a failed run leaves nothing behind.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

from transforms.volumes import ABDOMINAL_WINDOW
from transforms.base.describe import typed
from common.data.referring_ct.builder import build_referring_dataset, check_build_settings, find_pairs


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(out_dir: str, ct: str | None = None, labels: str | None = None, pairs: str | None = None,
         output_format: str = "png", val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
         lesion_values: list[int] | str | None = None, connected_components: bool = False,
         window_hu: tuple = ABDOMINAL_WINDOW, min_lesion_pixels: int = 4, resample_labels: bool = False,
         overwrite: bool = False) -> None:
    """Write ``train/val/test.jsonl`` and ``dataset.json`` under ``out_dir``; prints the record counts.

    Args:
        out_dir: output folder, new or empty; it appears when the dataset is complete (written beside it first).
        ct: a CT volume file, or a folder of them (not a DICOM series: convert it to NIfTI first).
        labels: its lesion-label volume, or a folder with label volumes of the same file names; LiTS's
            ``volume-N.nii[.gz]`` pair with ``segmentation-N.nii[.gz]`` here or, without labels, beside them.
        pairs: instead of ct/labels, a CSV with columns ``ct,label[,case]`` (paths relative to it).
        output_format: ``png`` (windowed slice PNGs) or ``volume`` (records point at the volumes).
        val_fraction, test_fraction, seed: patient-level split.
        lesion_values: which label values are lesions (required): ``all`` (every non-zero value is one
            lesion) or a list such as ``"[2]"`` (LiTS/KiTS tumour; 1 is the organ).
        connected_components: split the lesion voxels into 3-D connected components (without it, each
            lesion value is one lesion; a value holding separate components is named in a warning).
        window_hu: (low, high) HU window; default abdominal (-160, 240).
        min_lesion_pixels: lesion cross-sections smaller than this are not referred to.
        resample_labels: resample a label volume whose grid (shape/affine) differs from the CT's onto
            the CT grid (nearest neighbour) instead of refusing it.
        overwrite: replace an ``out_dir`` this tool wrote before (one with ``dataset.json``); a folder of
            other files is never replaced.
    """
    check_build_settings(output_format, val_fraction, test_fraction, window_hu, min_lesion_pixels)
    counts = build_referring_dataset(
        find_pairs(ct, labels, pairs), out_dir, output_format=output_format, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, lesion_values=lesion_values,
        connected_components=connected_components, window_hu=window_hu, min_lesion_pixels=min_lesion_pixels,
        resample_labels=resample_labels, overwrite=overwrite,
    )
    print(f"records: {counts}; wrote {out_dir}/{{train,val,test}}.jsonl")


if __name__ == "__main__":
    _repo.run_cli(main)
