"""Build the real-head test meshes in ``tests/data/real_heads`` from a MakeHuman checkout (CC0 assets).

Head mode and face framing must work on heads that nobody here made. MakeHuman's base mesh ``hm08`` and its
"macrodetails" targets were released as CC0 (September 2020, ``LICENSE.ASSETS.md`` of
github.com/makehumancommunity/makehuman), so the meshes may live in the repository. Each head is:

* the ``body`` group of ``makehuman/data/3dobjs/base.obj`` plus its two helper eyeballs, with one macro
  target applied at full weight (a target is a list of ``vertex dx dy dz`` offsets on the base mesh);
* cut to the head and neck: faces whose every vertex lies less than ``--crop`` below the top of the head,
  and within ``--half-width`` of the body's mid-plane (the arms hang far to the sides);
* written as an OBJ with ``v x y z r g b`` colours in MakeHuman's own units (decimetres, y up, facing +z),
  so the engine's unit and axis detection is exercised too. MakeHuman's skins are images this script does
  not use; the colours are a flat skin tone, white eyeballs with a dark iris where the eyeball faces
  forward — enough for a face detector to see eyes, and said so in the data README.

It also writes the **identity gallery** of real heads (``--gallery``, default
``engine/heads/real_face_gallery.npz``): the other ten young and old African, Asian and Caucasian, female and
male macro targets, cut the same way, which head mode re-identifies a real head among (a head nobody made is
not compared with the embedded generator's procedural people, in whose renders dlib finds no face). The two
test heads are left out of it, so a test head is never its own distractor.

Usage: ``python scripts/data/build_real_heads.py --makehuman PATH/TO/makehuman --out tests/data/real_heads``
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_MESH = "makehuman/data/3dobjs/base.obj"
TARGETS = "makehuman/data/targets/macrodetails"
SKIN = (0.80, 0.62, 0.52)
DARK_SKIN = (0.42, 0.29, 0.22)
EYE_WHITE = (0.93, 0.92, 0.90)
IRIS = (0.20, 0.12, 0.08)
KEEP_GROUPS = ("body", "helper-l-eye", "helper-r-eye")


@dataclass(frozen=True)
class HeadRecipe:
    name: str
    target: str | None  # a macrodetails target, applied at weight 1
    skin: tuple[float, float, float]


RECIPES = (
    HeadRecipe("makehuman_caucasian_female_young", "caucasian-female-young", SKIN),
    HeadRecipe("makehuman_african_male_old", "african-male-old", DARK_SKIN),
)
# The gallery: every young/old macro target but the test heads'; the skin tone follows the target's ethnicity
# (Asian: between the two), so colour alone does not single a head out from all the others.
MID_SKIN = (0.64, 0.48, 0.36)
ETHNIC_SKIN = {"african": DARK_SKIN, "asian": MID_SKIN, "caucasian": SKIN}
GALLERY = tuple(HeadRecipe(f"makehuman_{e}_{g}_{a}", f"{e}-{g}-{a}", ETHNIC_SKIN[e])
                for e in ("african", "asian", "caucasian") for g in ("female", "male") for a in ("young", "old")
                if f"{e}-{g}-{a}" not in {r.target for r in RECIPES})


def read_base(path: Path) -> tuple[np.ndarray, dict[str, list[list[int]]]]:
    """Vertices and each group's polygons (0-based vertex indices) of a MakeHuman base OBJ."""
    vertices, groups, group = [], {}, None
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertices.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("g "):
            group = line.split()[1]
        elif line.startswith("f "):
            groups.setdefault(group, []).append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    return np.asarray(vertices), groups


def read_target(path: Path, count: int) -> np.ndarray:
    """(count, 3) offsets of a MakeHuman ``.target`` (unlisted vertices do not move)."""
    offsets = np.zeros((count, 3))
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    table = np.asarray(rows, dtype=float)
    offsets[table[:, 0].astype(int)] = table[:, 1:4]
    return offsets


def build_head(vertices: np.ndarray, groups: dict[str, list[list[int]]], skin, crop: float, half_width: float):
    """(vertices, triangles, colours) of the head and neck, vertices renumbered."""
    body = np.asarray(groups["body"])
    top = vertices[np.unique(body)][:, 1].max()
    mid_x = vertices[np.unique(body)][:, 0].mean()
    inside = (vertices[:, 1] > top - crop) & (np.abs(vertices[:, 0] - mid_x) < half_width)
    polygons, colours = [], np.tile(np.asarray(skin), (len(vertices), 1))
    for name in KEEP_GROUPS:
        quads = np.asarray(groups[name])
        keep = inside[quads].all(axis=1)
        polygons.append(quads[keep])
        if name.endswith("eye"):
            eye = np.unique(quads)
            centre = vertices[eye].mean(axis=0)
            radius = np.linalg.norm(vertices[eye] - centre, axis=1).max()
            forward = (vertices[eye, 2] - centre[2]) / radius
            colours[eye] = np.where((forward > 0.8)[:, None], IRIS, EYE_WHITE)
    quads = np.concatenate(polygons)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    used = np.unique(triangles)
    renumber = np.full(len(vertices), -1)
    renumber[used] = np.arange(len(used))
    return vertices[used], renumber[triangles], colours[used]


def write_obj(path: Path, vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray, header: str) -> None:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"v {x:.4f} {y:.4f} {z:.4f} {r:.3f} {g:.3f} {b:.3f}" for (x, y, z), (r, g, b) in zip(vertices, colours)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in triangles]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--makehuman", required=True, type=Path, help="a checkout of makehumancommunity/makehuman")
    parser.add_argument("--out", default=Path("tests/data/real_heads"), type=Path)
    parser.add_argument("--crop", type=float, default=3.2, help="decimetres below the top of the head")
    parser.add_argument("--half-width", type=float, default=1.6, help="decimetres either side of the mid-plane")
    parser.add_argument("--gallery", default=Path("engine/heads/real_face_gallery.npz"), type=Path,
                        help="where the identity gallery of the other macro targets goes")
    args = parser.parse_args()
    vertices, groups = read_base(args.makehuman / BASE_MESH)

    def head_of(recipe: HeadRecipe):
        moved = vertices + (read_target(args.makehuman / TARGETS / f"{recipe.target}.target", len(vertices))
                            if recipe.target else 0.0)
        return build_head(moved, groups, recipe.skin, args.crop, args.half_width)

    args.out.mkdir(parents=True, exist_ok=True)
    for recipe in RECIPES:
        v, f, c = head_of(recipe)
        header = (f"{recipe.name}: MakeHuman hm08 base mesh with the macrodetails target {recipe.target!r} at weight 1,\n"
                  "cut to head and neck by scripts/data/build_real_heads.py. MakeHuman assets: CC0 1.0 (Data Collection AB,\n"
                  "Joel Palmius, Jonas Hauquier; originally Manuel Bastioni). Units: decimetres, y up, facing +z.")
        write_obj(args.out / f"{recipe.name}.obj", v, f, c, header)
        print(f"{recipe.name}: {len(v)} vertices, {len(f)} triangles, height {np.ptp(v[:, 1]):.2f} dm")
    arrays = {"names": np.asarray([r.name for r in GALLERY]),
              "licence": np.asarray("MakeHuman hm08 + macrodetails targets, CC0 1.0 (Data Collection AB, Joel Palmius, "
                                    "Jonas Hauquier; originally Manuel Bastioni); cut by scripts/data/build_real_heads.py. "
                                    "Units: decimetres, y up, facing +z.")}
    for i, recipe in enumerate(GALLERY):
        v, f, c = head_of(recipe)
        arrays[f"vertices_{i}"] = v.astype(np.float32)
        arrays[f"faces_{i}"] = f.astype(np.uint16 if len(v) < 65536 else np.int32)
        arrays[f"colours_{i}"] = np.round(c * 255).astype(np.uint8)
    args.gallery.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.gallery, **arrays)
    print(f"gallery: {len(GALLERY)} heads → {args.gallery} ({args.gallery.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
