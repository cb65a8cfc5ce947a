"""Latent MIM's loss and its collapse monitors (the model is in :mod:`mcm_core.models.latent_mim`).

- The loss: :func:`patch_info_nce` (the recipe: each hidden patch's prediction picks its own target
  among the image's hidden-patch targets) or :func:`latent_mse` (the naive regression the paper
  warns about), with :func:`standardize_tokens` for the predictions.
- The similarity statistics of the regularizer: :func:`mean_pairwise_cosine` (ours: distinct pairs)
  and :func:`mean_cosine_with_self` (the reference code's: self-pairs included).
- :func:`collapse_monitors`, returned in ``losses`` every step (so the trainer's history holds them):
  mean pairwise cosine of target, prediction and visible tokens, the effective rank of target and
  visible tokens, and the share of the target variance that patch position alone explains. They
  are batched, detached and never read back to the host.

**Effective rank** (our choice): the participation ratio ``(sum l)^2 / sum l^2`` of the eigenvalues
``l`` of the L2-normalized tokens' Gram matrix: 1 when all tokens are parallel, up to ``D``. It
needs no eigendecomposition, so it never synchronizes a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it already is (the reference check runs in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def standardize_tokens(x: torch.Tensor, eps: float = 1e-6, reference: bool = False) -> torch.Tensor:
    """Zero mean, unit variance per channel over each image's tokens: (B, N, D) -> (B, N, D).

    ``(x - mean) / sqrt(var + eps)`` with the biased variance; ``reference=True``: the reference
    code's ``(x - mean) / (std + 1e-4)`` with the unbiased std (``eps`` unused).
    """
    mean = x.mean(dim=1, keepdim=True)
    if reference:
        return (x - mean) / (x.std(dim=1, keepdim=True) + 1e-4)
    return (x - mean) / (x.var(dim=1, unbiased=False, keepdim=True) + eps).sqrt()


def patch_info_nce(pred: torch.Tensor, target: torch.Tensor, tau: float, standardize: bool = True,
                   reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-level InfoNCE within each image, scaled by ``2 * tau``.

    Row ``i`` of ``pred`` must pick row ``i`` of ``target`` among the ``N`` targets of the same
    image (the other hidden patches are the negatives).

    Args:
        pred, target: (B, N, D), N >= 2 hidden patches per image.
        reference: standardize as the reference code does (see ``standardize_tokens``).
    Returns:
        The loss (float32 scalar, float64 for float64 inputs; exactly ``2 * tau * ln N`` when all
        targets of an image are equal) and the detached fraction of predictions whose most similar
        target is their own.
    """
    # Why: float32 with autocast off, so bf16 rounding does not blur logits scaled by 1 / tau.
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = at_least_float32(pred), at_least_float32(target)
        if standardize:
            pred = standardize_tokens(pred, reference=reference)
        logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2) / tau  # (B, N, N)
        labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)  # (B, N)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten()) * 2 * tau
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return loss, accuracy


def latent_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of raw latents: (B, N, D) x 2 -> float32 scalar."""
    with torch.autocast(pred.device.type, enabled=False):
        return F.mse_loss(at_least_float32(pred), at_least_float32(target))


def mean_pairwise_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the pairs of distinct tokens of each image, averaged over images: (B, N, D) -> scalar.

    Uses ``sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - N`` for unit vectors ``u``: O(N D), no N x N matrix.
    """
    n = tokens.shape[1]
    u = F.normalize(tokens.float(), dim=-1)
    return ((u.sum(dim=1).pow(2).sum(dim=-1) - n) / (n * (n - 1))).mean()


def mean_cosine_with_self(tokens: torch.Tensor) -> torch.Tensor:
    """Mean cosine over all ordered pairs of each image's tokens, self-pairs included: (B, N, D) -> scalar.

    The reference code's regularizer statistic: ``|sum_i u_i|^2 / N^2`` for unit vectors ``u``
    (``1 / N`` for orthogonal tokens, 1 for parallel ones), averaged over images.
    """
    u = F.normalize(at_least_float32(tokens), dim=-1)
    return (u.sum(dim=1).pow(2).sum(dim=-1) / tokens.shape[1] ** 2).mean()


def effective_rank(tokens: torch.Tensor) -> torch.Tensor:
    """Participation ratio of the L2-normalized tokens, all images pooled: (B, N, D) -> scalar in [1, D].

    With ``U`` the (M, D) unit rows and ``l`` the eigenvalues of ``U^T U``:
    ``(sum l)^2 / sum l^2 = M^2 / |U^T U|_F^2`` -- 1 when every token points the same way,
    ``D`` when they spread evenly over ``D`` orthogonal directions.
    """
    u = F.normalize(tokens.float().flatten(0, 1), dim=-1)  # (M, D)
    gram = u.T @ u  # (D, D)
    return u.shape[0] ** 2 / gram.pow(2).sum()


def position_share(tokens: torch.Tensor, ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Share of the tokens' variance that their patch position alone explains: (B, N, D), (B, N) -> scalar in [0, 1].

    Between-position variance (of the per-position means over the batch) over the total variance.
    Near 1: the tokens say *where* a patch is, not *what* it shows -- the same at a position in
    every image, a collapse that InfoNCE can reach through the position embeddings. With few
    images per position the estimate has a small positive bias (about ``L / (B N)``).
    """
    t = tokens.float().flatten(0, 1)  # (B N, D)
    flat = ids.flatten()
    sums = t.new_zeros(num_patches, t.shape[1]).index_add_(0, flat, t)
    counts = t.new_zeros(num_patches).index_add_(0, flat, torch.ones_like(flat, dtype=t.dtype))
    means = sums / counts.clamp(min=1)[:, None]  # (L, D): mean token of each position over the batch
    centre = t.mean(dim=0)
    between = (means[flat] - centre).pow(2).sum()
    return between / (t - centre).pow(2).sum().clamp(min=1e-12)


def collapse_monitors(target: torch.Tensor, pred: torch.Tensor, visible: torch.Tensor,
                      ids_hidden: torch.Tensor, num_patches: int) -> dict[str, torch.Tensor]:
    """Detached collapse monitors of one step.

    Args:
        target: (B, N_h, D) target latents; pred: (B, N_h, D) raw predictions; visible: (B, N_v, D)
            online encoder tokens of the visible patches; ids_hidden: (B, N_h) hidden patch indices.
    Returns:
        ``cos_target``, ``cos_pred``, ``cos_visible`` (mean pairwise cosine within each image),
        ``erank_target``, ``erank_visible`` (effective rank over the batch's tokens) and
        ``pos_share_target`` (share of the target variance explained by patch position).
    """
    with torch.no_grad(), torch.autocast(target.device.type, enabled=False):
        out = {"cos_target": mean_pairwise_cosine(target), "cos_pred": mean_pairwise_cosine(pred),
               "erank_target": effective_rank(target), "erank_visible": effective_rank(visible),
               "pos_share_target": position_share(target, ids_hidden, num_patches)}
        if visible.shape[1] > 1:  # a single visible patch has no pair
            out["cos_visible"] = mean_pairwise_cosine(visible)
    return out


__all__ = ["at_least_float32", "standardize_tokens", "patch_info_nce", "latent_mse", "mean_pairwise_cosine",
           "mean_cosine_with_self", "effective_rank", "position_share", "collapse_monitors"]
