"""Meshes with hand-known answers for head-mode tests."""

from __future__ import annotations

import math

import numpy as np

from engine.mesh import Mesh

RADIUS = 0.2
RED, BLUE = (230, 20, 20), (20, 20, 230)


def uv_sphere(radius: float = RADIUS, rings: int = 24, segments: int = 48) -> Mesh:
    """Closed UV sphere centred at the origin, counter-clockwise outward; red above y = 0, blue below."""
    theta = np.linspace(0, math.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring_points = np.stack((np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)), -1).reshape(-1, 3)
    vertices = np.concatenate(([[0, 1, 0]], ring_points, [[0, -1, 0]])) * radius
    faces = []
    index = lambda r, s: 1 + r * segments + s % segments  # noqa: E731
    for s in range(segments):
        faces.append((0, index(0, s + 1), index(0, s)))
        faces.append((len(vertices) - 1, index(rings - 2, s), index(rings - 2, s + 1)))
    for r in range(rings - 2):
        for s in range(segments):
            a, b, c, d = index(r, s), index(r, s + 1), index(r + 1, s), index(r + 1, s + 1)
            faces += [(a, b, d), (a, d, c)]
    colours = np.where(vertices[:, 1:2] >= 0, RED, BLUE).astype(np.uint8)
    return Mesh(vertices.astype(np.float32), np.asarray(faces, np.int32), colours)
