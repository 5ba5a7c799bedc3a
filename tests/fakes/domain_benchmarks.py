"""Tiny fakes of the domain-adaptation datasets in their exact layouts (spec
``paper-benchmarks.md`` §6): Office-31, Office-Home, VisDA-2017 and DomainNet. Full class
counts; 8x8 noise images (JPEG, PNG for VisDA's train domain), one grayscale and one RGBA
PNG in each fake, a stray README.txt and .DS_Store at the top."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .paper_benchmarks import Images, write_strays

OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair",
    "desk_lamp", "desktop_computer", "file_cabinet", "headphones", "keyboard",
    "laptop_computer", "letter_tray", "mobile_phone", "monitor", "mouse", "mug",
    "paper_notebook", "pen", "phone", "printer", "projector", "punchers", "ring_binder",
    "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can")
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real World")
OFFICE_HOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator",
    "Calendar", "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp",
    "Drill", "Eraser", "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder",
    "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade",
    "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio",
    "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can",
    "Webcam")
VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle",
                 "person", "plant", "skateboard", "train", "truck")
# 345 names: DomainNet's awkward ones (its labels ignore case, "_" and "-") and fillers
DOMAINNET_TRICKY = ("aircraft_carrier", "cello", "cell_phone", "paintbrush", "paint_can",
                    "teapot", "teddy-bear", "The_Eiffel_Tower", "The_Great_Wall_of_China",
                    "The_Mona_Lisa", "trumpet", "t-shirt", "zigzag")
DOMAINNET_CLASSES = DOMAINNET_TRICKY + tuple(
    f"class_{i:03d}" for i in range(345 - len(DOMAINNET_TRICKY)))


def domainnet_label_order(name: str) -> str:
    """The official lists' order, written independently of the stream (see its test)."""
    return "".join(c for c in name.lower() if c.isalnum())


def _domain(folder: Path, classes, per_class: int, rng, size: int, name, suffix=".jpg"
            ) -> list[tuple[str, int]]:
    """Writes ``per_class`` images per class; the first one of the domain grayscale PNG,
    the second RGBA PNG. Returns (path relative to ``folder``, label) in sorted order."""
    images, written = Images(size, rng, suffix), []
    for label, cls in enumerate(sorted(classes)):
        for i in range(per_class):
            path = images.write(folder / cls, name(cls, label, i))
            written.append((f"{cls}/{path.name}", label))
    return written


def make_office31(root: Path, per_class: int = 3, size: int = 8, seed: int = 0,
                  images_level: bool = True, lists: bool = False) -> Path:
    """``domain_adaptation_images/<domain>/images/<class>/frame_000<i>.jpg`` (or without
    ``images/``); ``lists``: SHOT's ``<domain>_list.txt`` beside the domains."""
    rng = np.random.default_rng(seed)
    top = Path(root) / "domain_adaptation_images"
    for domain in OFFICE31_DOMAINS:
        folder = top / domain / "images" if images_level else top / domain
        written = _domain(folder, OFFICE31_CLASSES, per_class, rng, size,
                          lambda c, k, i: f"frame_{i + 1:04d}")
        if lists:
            prefix = f"/data/office/domain_adaptation_images/{domain}/images/"
            (top / f"{domain}_list.txt").write_text(
                "".join(f"{prefix}{p} {label}\n" for p, label in written))
    write_strays(Path(root))
    return Path(root)


def make_office_home(root: Path, per_class: int = 3, size: int = 8, seed: int = 0,
                     real_world: str = "Real World") -> Path:
    """``OfficeHomeDataset_10072016/<Domain>/<Class>/0000<i>.jpg``; ``real_world``: the
    folder name of that domain (``RealWorld``/``Real_World`` in SHOT's copies)."""
    rng = np.random.default_rng(seed)
    top = Path(root) / "OfficeHomeDataset_10072016"
    for domain in OFFICE_HOME_DOMAINS:
        folder = top / (real_world if domain == "Real World" else domain)
        _domain(folder, OFFICE_HOME_CLASSES, per_class, rng, size,
                lambda c, k, i: f"{i + 1:05d}")
    (top / "ImageInfo.csv").write_text("image,source\n")
    write_strays(Path(root))
    return Path(root)


def make_visda(root: Path, per_class: int = 3, size: int = 8, seed: int = 0,
               test_list: str | None = None) -> Path:
    """``train/<class>/*.png`` and ``validation/<class>/*.jpg``, each with its
    ``image_list.txt`` (``<class>/<file> <label>``); ``test/trunk01/``, ``test/trunk02/``
    ``<md5>.jpg`` (``per_class`` per class, shuffled, no class folders) and the released
    ground truth (``trunkNN/<file> <label>``, shuffled) at ``<root>/image_list.txt``
    (``test_list="root"``), ``test/image_list.txt`` (``"test"``) or nowhere (None)."""
    import hashlib
    rng = np.random.default_rng(seed)
    for domain, suffix in (("train", ".png"), ("validation", ".jpg")):
        written = _domain(Path(root) / domain, VISDA_CLASSES, per_class, rng, size,
                          lambda c, k, i: f"src_{k}_{i:06d}" if domain == "train"
                          else f"val_{k}_{i:06d}", suffix)
        (Path(root) / domain / "image_list.txt").write_text(
            "".join(f"{p} {label}\n" for p, label in written))
    images, truth = Images(size, rng), []
    labels = rng.permutation(np.repeat(np.arange(len(VISDA_CLASSES)), per_class))
    for i, label in enumerate(labels):
        trunk = f"trunk{1 + 2 * i // len(labels):02d}"
        stem = hashlib.md5(f"{seed}-{i}".encode()).hexdigest()
        path = images.write(Path(root) / "test" / trunk, stem)
        truth.append(f"{trunk}/{path.name} {label}\n")
    if test_list is not None:
        folder = Path(root) / "test" if test_list == "test" else Path(root)
        (folder / "image_list.txt").write_text("".join(truth[::-1]))
    write_strays(Path(root))
    return Path(root)


def make_domainnet(root: Path, domains=("clipart", "sketch"), train: int = 2, test: int = 1,
                   size: int = 8, seed: int = 0) -> Path:
    """``<domain>/<class>/<domain>_<CCC>_<NNNNNN>.jpg`` for 345 classes (CCC = label + 1 in
    the official order) and the lists ``<domain>_train.txt`` (``train`` per class),
    ``<domain>_test.txt`` (``test``): ``<domain>/<class>/<file> <label>``."""
    rng = np.random.default_rng(seed)
    order = sorted(DOMAINNET_CLASSES, key=domainnet_label_order)
    label = {c: k for k, c in enumerate(order)}
    for domain in domains:
        lines = {"train": [], "test": []}
        images = Images(size, rng)
        for cls in sorted(DOMAINNET_CLASSES):
            for i in range(train + test):
                file = images.write(Path(root) / domain / cls,
                                    f"{domain}_{label[cls] + 1:03d}_{i + 1:06d}").name
                lines["train" if i < train else "test"].append(
                    f"{domain}/{cls}/{file} {label[cls]}\n")
        for part, text in lines.items():
            (Path(root) / f"{domain}_{part}.txt").write_text("".join(text))
    write_strays(Path(root))
    return Path(root)
