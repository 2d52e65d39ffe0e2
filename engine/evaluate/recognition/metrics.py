"""Losses and held-out measures for embeddings: InfoNCE, retrieval accuracy, same/different cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE between two views of B subjects: row i of ``a`` and ``b`` are the same subject.

    Both (B, D) and unit length; each row must pick its partner out of the B candidates of the other view.
    """
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def retrieval_top1(gallery: Tensor, queries: Tensor, query_subject: Tensor) -> float:
    """Fraction of queries whose most cosine-similar gallery row is their own subject.

    ``gallery`` (M, D): one embedding per subject (row m = subject m); ``queries`` (Q, D); ``query_subject``
    (Q,) int indices into the gallery. Embeddings need not be normalised.
    """
    if gallery.dim() != 2 or queries.dim() != 2 or gallery.shape[1] != queries.shape[1]:
        raise InputError(f"retrieval_top1: gallery {tuple(gallery.shape)} and queries {tuple(queries.shape)} must be (·, D)")
    similarity = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    return float((similarity.argmax(dim=1) == query_subject.to(similarity.device)).float().mean())


def same_vs_different_cosine(embeddings: Tensor, subject: Tensor) -> tuple[float, float]:
    """Mean cosine over pairs of distinct rows with the same subject, and over pairs of different subjects."""
    unit = F.normalize(embeddings, dim=-1)
    cos = unit @ unit.T
    same = subject.view(-1, 1) == subject.view(1, -1)
    off_diagonal = ~torch.eye(len(subject), dtype=torch.bool, device=cos.device)
    same_pairs, different_pairs = cos[same & off_diagonal], cos[~same]
    return (
        float(same_pairs.mean()) if same_pairs.numel() else float("nan"),
        float(different_pairs.mean()) if different_pairs.numel() else float("nan"),
    )


def supervised_contrastive(embeddings: Tensor, subject: Tensor, temperature: float = 0.1) -> Tensor:
    """Multi-positive InfoNCE (SupCon): every other render of the same subject in the batch is a positive.

    ``embeddings`` (N, D) unit length, ``subject`` (N,) labels; each subject should appear ≥ 2 times. For each
    anchor, the loss is the mean over its positives of −log softmax among all other rows. With k renders per
    subject every image gets k − 1 positives, more signal per rendered image than one pair.
    """
    n = embeddings.shape[0]
    logits = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (subject.view(-1, 1) == subject.view(1, -1)) & ~self_mask
    counts = positive.sum(dim=1)
    if bool((counts == 0).any()):
        raise InputError("supervised_contrastive: every subject needs at least two rows in the batch")
    return -(log_prob.masked_fill(~positive, 0.0).sum(dim=1) / counts).mean()
