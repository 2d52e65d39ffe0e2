"""Benchmark the Blender importer: a ~200k-triangle head from ``head.npz`` into the scene.

Run ``python bench/bench_import.py`` (needs the ``bpy`` module from requirements-dev.txt). The head is a
procedural world head meshed at a marching-cubes resolution chosen for ~200k triangles
(``engine.world.scan.head_mesh``), written with ``engine.mesh.write_npz``; then the extension's
``import_head`` (numpy + ``foreach_set``, colour attribute, Principled material, link at the 3D cursor)
runs ``--repeats`` times and the median is reported, split into reading the NPZ and building the object.
For comparison it also times Blender's generic ``Mesh.from_pydata`` on the same arrays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bpy  # noqa: F401  (first: Blender sets up its own modules)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from bridge.mesh_import import create_head_object, read_head_npz, yup_to_zup  # noqa: E402
from engine.mesh import write_npz  # noqa: E402
from engine.world.identity import sample_identities  # noqa: E402
from engine.world.scan import head_mesh  # noqa: E402


def make_head(path: Path, resolution: int) -> tuple[int, int, float]:
    identity = sample_identities(1, torch.Generator().manual_seed(0))[0]
    t = time.perf_counter()
    mesh = head_mesh(identity, resolution=resolution)
    seconds = time.perf_counter() - t
    write_npz(mesh, path)
    return mesh.num_vertices, mesh.num_faces, seconds


def clear_scene() -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for mesh in list(bpy.data.meshes):
        bpy.data.meshes.remove(mesh)
    for material in list(bpy.data.materials):
        bpy.data.materials.remove(material)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=236, help="marching-cubes N (236 → ~200k triangles)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "head.npz"
        vertices, faces, mesh_seconds = make_head(path, args.resolution)
        read_s, build_s, total_s, pydata_s = [], [], [], []
        for _ in range(args.repeats):
            clear_scene()
            t0 = time.perf_counter()
            arrays = read_head_npz(path)
            t1 = time.perf_counter()
            obj = create_head_object(bpy.context, arrays, "Head.bench")
            t2 = time.perf_counter()
            read_s.append(t1 - t0)
            build_s.append(t2 - t1)
            total_s.append(t2 - t0)
            assert len(obj.data.polygons) == faces
            t3 = time.perf_counter()
            generic = bpy.data.meshes.new("pydata")
            generic.from_pydata(yup_to_zup(arrays.vertices).tolist(), [], arrays.faces.tolist())
            generic.update()
            pydata_s.append(time.perf_counter() - t3)
    report = {
        "vertices": vertices,
        "triangles": faces,
        "marching_cubes_resolution": args.resolution,
        "mesh_extraction_seconds": round(mesh_seconds, 2),
        "import_seconds_median": round(statistics.median(total_s), 3),
        "read_npz_seconds_median": round(statistics.median(read_s), 3),
        "build_object_seconds_median": round(statistics.median(build_s), 3),
        "from_pydata_seconds_median": round(statistics.median(pydata_s), 3),
        "repeats": args.repeats,
        "blender": bpy.app.version_string,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
