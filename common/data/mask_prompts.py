"""Text prompts written from masks, for datasets that have masks but no reports (``scripts/make_prompts.py``).

Each (image, mask) pair becomes a record in Poudel et al.'s prompt format, the one the Kvasir-SEG /
BKAI-IGH reader takes (:mod:`common.data.prompt_json`)::

    {"img_name": ..., "mask_name": ..., "bbox": [[x0, y0, x1, y1], ...], "prompts": {"p0": ..., ..., "p9": [...]},
     "attributes": {"count": 1, "size": "small", "color": "pink", "shape": "round", "location": ["top left"]}}

Attributes come from the mask and the image:

* **count**: connected components (8-connected) of at least ``min_component`` of the image's pixels;
* **size**: the mean component area as a fraction of the image: ``small`` below ``size_thresholds[0]``,
  ``large`` from ``size_thresholds[1]``, ``medium`` between (defaults 2.5 % and 6 %);
* **shape**: of the largest component: ``irregular`` when its solidity (area / convex hull area) is below
  ``solidity_threshold`` (0.9), else ``round`` when the minor/major axis ratio of its second moments is at
  least ``round_ratio`` (0.9), else ``oval``;
* **color**: the mean image colour inside the mask, named by the nearest entry of ``palette`` in CIELAB,
  lightness weighted by ``lightness_weight`` (0.5: shading and vignetting change lightness more than hue);
* **location**: each component's centroid on a 3×3 grid of the image (``top left`` ... ``bottom right``),
  distinct cells in reading order.

Levels, as in Poudel et al.'s published files (naamiinepal/medvlsm, ``data/kvasir_polyp/anns``): p0 is
the empty prompt (their image-only level; the readers here refuse an empty text, so it is not a training
level), then one attribute more per level (class name ``polyp``)::

    p0  ""
    p1  polyp
    p2  round polyp                                                   + shape
    p3  pink round polyp                                              + colour
    p4  small pink round polyp                                        + size
    p5  one small pink round polyp                                    + count (plural from two: "polyps")
    p6  one small pink round polyp, located in top left of the image  + location
    p7  ["polyp which is <definition>", ...]                          class definitions
    p8  ["one small pink round polyp which is <definition>", ...]
    p9  ["one small pink round polyp which is <definition> located in top left of the image", ...]

p7-p9 use the class's ``definitions`` (a list per class name, as Poudel et al. wrote five for polyps)
when given; otherwise two rephrasings each, drawn from fixed templates with a generator seeded per
record. Several locations are joined with ", " ("top left, top"), as in the published files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transforms.base.errors import ConfigurationError, DatasetError
from common.core.flags import NOTHING_RUN, check_range

LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GRID = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
# named colours (sRGB 0-255); the nearest in CIELAB names a mask's mean colour
PALETTE = {
    "red": (190, 40, 40), "pink": (230, 150, 140), "orange": (230, 140, 50), "yellow": (225, 205, 80),
    "green": (70, 150, 70), "blue": (60, 90, 190), "purple": (130, 70, 150), "brown": (120, 75, 45),
    "white": (235, 232, 228), "grey": (128, 128, 128), "black": (25, 25, 25),
}
P7 = ("{p6}", "a {size} {name} in the {where}", "{count} {size} {color} {name_n} in the {where}",
      "{name_n} of {size} size, {where}")
P8 = ("{size} {shape} {name_n} at the {where}", "the {size} one, {where}", "{shape} {name_n}, {where}",
      "{count} {shape} {name_n} near the {where}")
P9 = ("{color} {name_n}, {size}, {where}", "{color} {shape} {name_n}", "{size} {color} region, {where}",
      "{name_n} that look {color}")


@dataclass
class PromptSettings:
    """The vocabulary and thresholds (module doc); every field is a ``make_prompts.py`` option."""

    size_thresholds: tuple[float, float] = (0.025, 0.06)
    round_ratio: float = 0.9
    solidity_threshold: float = 0.9
    min_component: float = 0.0005
    lightness_weight: float = 0.5
    palette: Mapping[str, Sequence[int]] = field(default_factory=lambda: dict(PALETTE))
    plurals: Mapping[str, str] = field(default_factory=dict)  # class name -> plural (default: + "s")
    definitions: Mapping[str, Sequence[str]] = field(default_factory=dict)  # class name -> definitions (p7-p9)

    def __post_init__(self):  # refuse values the attributes cannot use, before any mask is read
        thresholds = tuple(self.size_thresholds)
        if len(thresholds) != 2 or not 0 < thresholds[0] < thresholds[1] < 1:
            raise ConfigurationError(f"--size_thresholds must be two fractions of the image, small < large, both "
                                     f"between 0 and 1, got {self.size_thresholds!r}. {NOTHING_RUN}")
        check_range("round_ratio", self.round_ratio, 0, 1)
        check_range("solidity_threshold", self.solidity_threshold, 0, 1)
        check_range("min_component", self.min_component, 0, 1, below_high=True)
        check_range("lightness_weight", self.lightness_weight, 0)


def foreground(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """The target of a binary mask file, by the dataset readers' rule (:func:`common.data.datalist.mask_threshold`):
    above 127 in a JPEG mask, whose lossy edges hold stray values; any non-zero value (1, 2, 255 ...) in a
    lossless one. A JPEG mask with values but none above 127 would give an empty target: that raises."""
    from common.data.datalist import mask_threshold

    lossy = Path(path).suffix.lower() in LOSSY_MASK_SUFFIXES
    threshold = mask_threshold("kvasir" if lossy else "datalist")
    target = mask > threshold
    if lossy and not target.any() and mask.max() > 0:
        raise DatasetError(path, f"JPEG mask has values up to {mask.max()} but none above {threshold}, the threshold "
                                 "of lossy masks, so its target would be empty; save the mask as PNG")
    return target


def components(mask: np.ndarray, settings: PromptSettings) -> tuple[np.ndarray, list[int]]:
    """8-connected components of ``mask`` and the ids of those large enough to count."""
    from scipy import ndimage

    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, []
    areas = ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    keep = [i + 1 for i, a in enumerate(areas) if a >= settings.min_component * mask.size]
    return labels, keep or [int(np.argmax(areas)) + 1]  # a tiny mask still counts as one region


def size_word(fraction: float, settings: PromptSettings) -> str:
    small, large = settings.size_thresholds
    return "small" if fraction < small else "large" if fraction >= large else "medium"


def shape_word(component: np.ndarray, settings: PromptSettings) -> str:
    from skimage.measure import regionprops

    props = regionprops(component.astype(np.uint8))[0]
    if props.solidity < settings.solidity_threshold:
        return "irregular"
    ratio = props.axis_minor_length / props.axis_major_length if props.axis_major_length > 0 else 1.0
    return "round" if ratio >= settings.round_ratio else "oval"


def color_word(image: np.ndarray, mask: np.ndarray, settings: PromptSettings) -> str:
    """The palette name nearest (CIELAB, lightness weighted) to the mean colour of ``image`` inside ``mask``."""
    from skimage.color import rgb2lab

    rgb = np.asarray(image, dtype=np.float64)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    scale = 255.0 if rgb.max() > 1.0 else 1.0
    mean = rgb[mask > 0][:, :3].mean(axis=0) / scale
    lab = rgb2lab(mean[None, None, :])[0, 0]
    names = list(settings.palette)
    refs = rgb2lab(np.asarray([settings.palette[n] for n in names], dtype=np.float64)[None] / 255.0)[0]
    weights = np.array([settings.lightness_weight, 1.0, 1.0])
    return names[int(np.argmin((((refs - lab) * weights) ** 2).sum(axis=1)))]


def location_words(labels: np.ndarray, ids: Sequence[int]) -> list[str]:
    """Grid cells of the components' centroids, distinct, in reading order."""
    from scipy import ndimage

    h, w = labels.shape
    cells = set()
    for cy, cx in ndimage.center_of_mass(np.ones_like(labels), labels, list(ids)):
        cells.add((min(int(3 * cy / h), 2), min(int(3 * cx / w), 2)))
    return [GRID[r][c] for r, c in sorted(cells)]


def bboxes(labels: np.ndarray, ids: Sequence[int]) -> list[list[int]]:
    from scipy import ndimage

    boxes = ndimage.find_objects(labels)
    return [[int(boxes[i - 1][1].start), int(boxes[i - 1][0].start), int(boxes[i - 1][1].stop - 1),
             int(boxes[i - 1][0].stop - 1)] for i in ids]


def attributes(image: np.ndarray, mask: np.ndarray, settings: PromptSettings) -> dict:
    """count, size, shape, colour and location of ``mask`` (module doc); ``count`` 0 for an empty mask."""
    labels, ids = components(mask, settings)
    if not ids:
        return {"count": 0, "bbox": []}
    areas = [(labels == i).sum() for i in ids]
    largest = ids[int(np.argmax(areas))]
    return {
        "count": len(ids),
        "size": size_word(float(np.mean(areas)) / mask.size, settings),
        "shape": shape_word(labels == largest, settings),
        "color": color_word(image, np.isin(labels, ids), settings),
        "location": location_words(labels, ids),
        "bbox": bboxes(labels, ids),
    }


def _plural(name: str, settings: PromptSettings) -> str:
    return settings.plurals.get(name) or (name + "es" if name.endswith(("s", "x", "ch", "sh")) else name + "s")


def prompts(name: str, attrs: Mapping, settings: PromptSettings, rng: np.random.Generator) -> dict:
    """p0..p9 for one class in one image (module doc); negative prompts for ``count`` 0."""
    count = int(attrs["count"])
    plural = _plural(name, settings)
    definitions = list(settings.definitions.get(name, []))
    if count == 0:
        return {"p0": "", "p1": f"no {name}", "p2": f"no {name}", "p3": f"no {name}", "p4": f"no {name}",
                "p5": f"no {name}", "p6": f"no {name} in the image", "p7": [f"no {name} in the image"],
                "p8": [f"there is no {name}"], "p9": [f"no {plural} visible"]}
    number = NUMBERS[count] if count < len(NUMBERS) else "many"
    name_n = name if count == 1 else plural
    where = ", ".join(attrs["location"]) + " of the image"
    p5 = f"{number} {attrs['size']} {attrs['color']} {attrs['shape']} {name_n}"
    words = {"count": number, "size": attrs["size"], "color": attrs["color"], "shape": attrs["shape"],
             "name": name, "name_n": name_n, "where": where, "p6": f"{p5}, located in {where}"}

    def draw(templates):
        picked = rng.choice(len(templates), size=2, replace=False)
        return [templates[i].format(**words) for i in sorted(picked)]

    return {
        "p0": "",
        "p1": name,
        "p2": f"{attrs['shape']} {name}",
        "p3": f"{attrs['color']} {attrs['shape']} {name}",
        "p4": f"{attrs['size']} {attrs['color']} {attrs['shape']} {name}",
        "p5": p5,
        "p6": words["p6"],
        "p7": [f"{name} which is {d}" for d in definitions] or draw(P7),
        "p8": [f"{p5} which is {d}" for d in definitions] or draw(P8),
        "p9": [f"{p5} which is {d} located in {where}" for d in definitions] or draw(P9),
    }


def record_rng(seed: int, key: str) -> np.random.Generator:
    """A generator of its own for each record: the same prompts whatever the order or subset of records."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])
