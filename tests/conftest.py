"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_engine_data(tmp_path_factory):
    """The engine keeps per-user data and caches in ``$HEAD_STYLIZER_DATA`` (else ~/.local/share/head-stylizer):
    point it at a folder of this test session, for the session and the engine processes its tests start, so a
    run neither reads a developer's caches nor leaves its own behind."""
    from engine.styles.library import DATA_ENV

    previous = os.environ.get(DATA_ENV)
    os.environ[DATA_ENV] = str(tmp_path_factory.mktemp("engine-data"))
    yield
    if previous is None:
        os.environ.pop(DATA_ENV, None)
    else:
        os.environ[DATA_ENV] = previous


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch work on one thread.

    The tiny test models are far too small to gain from threads, and on a busy 2-core machine the thread
    pool's contention made them ~10× slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory):
    """A tiny random SD-1.5-layout folder with edge and depth ControlNets, built once per test session."""
    from engine.guidance.tiny import build_tiny_diffusion_folder

    return build_tiny_diffusion_folder(tmp_path_factory.mktemp("diffusion") / "sd", seed=0)
