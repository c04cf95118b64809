"""Copy the README's pictures out of the demo's reports (run `make demo` first: it writes demo-report/
and the MNIST study in demo-report/mnist/).

    .venv/bin/python docs/make_images.py demo-report
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from cnnvis.viz import grid


def main(report: str) -> None:
    src, dst = Path(report) / "img", Path(__file__).parent / "img"
    dst.mkdir(exist_ok=True)
    classes = ["pelican", "magpie", "sea_snake", "flamingo", "golden_retriever"]
    cells = [Image.open(src / f"class_{c}.png") for c in classes]
    cmp = [Image.open(src / f"class_pelican_{p}.png") for p in ("chollet2016", "lucid2017")]
    strip = grid([cells + cmp], col_labels=[c.replace("_", " ") for c in classes] + ["chollet2016", "lucid2017"],
                 cell=224)
    strip.save(dst / "classes.jpg", quality=88)
    for name in ("filters_vgg16_hed", "filters_efficientnet_lite0", "attribution_methods", "attribution_cams",
                 "deconv_vgg16_hed",
                 "deconv_efficientnet_lite0", "sanity", "dream_chelsea"):
        im = Image.open(src / f"{name}.png").convert("RGB")
        if im.size[0] > 1400:
            im = im.resize((1400, round(im.size[1] * 1400 / im.size[0])), Image.LANCZOS)
        im.save(dst / f"{name}.jpg", quality=85)
    for path in sorted(src.glob("occlusion_*.png"))[:1] + sorted(src.glob("inversion_*.png"))[:1]:
        name = path.stem.split("_")[0]  # occlusion.jpg, inversion.jpg: the report's first photo
        im = Image.open(path).convert("RGB")
        if im.size[0] > 1400:
            im = im.resize((1400, round(im.size[1] * 1400 / im.size[0])), Image.LANCZOS)
        im.save(dst / f"{name}.jpg", quality=85)
    study = Path(report) / "mnist" / "img"  # the dataset study of the demo's MNIST net
    for name in ("study_weights", "study_maps_0-0", "study_maxmaps", "study_top_channel_001", "study_atlas",
                 "study_neighbours", "study_regularizers", "study_confusion", "compare_cka", "compare_matches",
                 "evolution"):
        if (study / f"{name}.png").exists():
            Image.open(study / f"{name}.png").convert("RGB").save(dst / f"{name.replace('_0-0', '')}.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-report")
