"""Split a labeled image folder into train/ and test/ folders of symbolic links, stratified and seeded.

    python scripts/split_folder.py ../shared/data/hyperkvasir-lower-gi /tmp/split --test-fraction 0.2 --seed 0

Each class is shuffled with the seed and round(n * fraction) of its images go to test/, the
same split `endodoc train` makes for its validation images. The source files are not copied.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from services.embedding.dataset import DatasetError, scan_labeled_folder, stratified_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with one subfolder of images per class")
    parser.add_argument("out", type=Path, help="new folder for train/ and test/")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each class in test/ (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        items = scan_labeled_folder(args.source.resolve(), min_per_class=3)
        train, test = stratified_split(items, args.test_fraction, args.seed)
    except DatasetError as error:
        print(f"split_folder: error: {error}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"split_folder: error: {args.out} is not empty; pass a new folder.", file=sys.stderr)
        return 2
    for name, part in (("train", train), ("test", test)):
        for item in part:
            folder = args.out / name / item.label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / item.path.name).symlink_to(item.path)
    print(f"{len(train)} train and {len(test)} test images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
