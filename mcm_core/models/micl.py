"""MiCL: masked image contrastive learning (paper 001), as specified in METHODS.md section 3.

Per image, the patches that survive masking are split into two disjoint halves: two
views of the same image with no patch in common. One shared encoder (the backbone's
``ViTEncoder``, nothing added) reads each view; its CLS token after the final norm is
the representation. A symmetric InfoNCE loss asks each view to pick its partner among
the other views of the batch, through the heavy-tailed similarity
``0.5 * (1 + s) / (1 + kappa * (1 - s)) / tau`` of the cosine ``s``.
No decoder, no projector, no momentum encoder, no hand-made augmentations.

How the views relate to the trainer (our choice, documented in notebook 05)
-----------------------------------------------------------------------------
- The ``mask`` (B, L) the trainer passes (True = hidden, drawn by the configured masker
  at ``mask_ratio``) decides which patches survive: ``L - num_hidden(L, mask_ratio)``
  of them (with an odd count, one survivor goes to neither view).
- The ``generator`` the trainer passes (a second stream seeded by (seed, step)) splits the
  survivors: uniform noise ranks them and the first half is view 1, the second view 2.
- Without a ``mask``, the same noise is the one random permutation of the paper: its
  first ``n`` patches are view 1, the next ``n`` view 2, the rest hidden from both.

With random masking both routes draw the same distribution of views (a uniform random
subset, then a uniform split). Both inputs are pure functions of (seed, step), so the
views of a step are deterministic and a resumed run sees exactly the same views. Any
masking strategy (block, hierarchical) therefore plugs into MiCL too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcm_core.masking import check_mask, num_hidden
from mcm_core.models._registry import register_model
from mcm_core.models.backbone import BackboneConfig, ViTEncoder, check_images, gather_tokens
from mcm_core.models.outputs import ImageModel, ModelOutput


def view_size(num_patches: int, mask_ratio: float) -> int:
    """Patches per view: half of the ``L - num_hidden(L, mask_ratio)`` patches that survive masking.

    With an odd number of survivors, one of them (chosen at random) goes to neither view.

    Raises:
        ValueError: when fewer than 2 patches survive, so there cannot be two disjoint views.
    """
    kept = num_patches - num_hidden(num_patches, mask_ratio)
    if kept < 2:
        raise ValueError(f"mask_ratio={mask_ratio} keeps {kept} of {num_patches} patches, too few for two disjoint "
                         f"views of at least one patch each; keep at least 2, e.g. "
                         f"mask_ratio={1 - 2 / num_patches:g} (1 patch per view) or 0.75 (a quarter of the image)")
    return kept // 2


def heavy_tailed_similarity(cosine: torch.Tensor, kappa: float, tau: float) -> torch.Tensor:
    """MiCL's similarity logits: ``0.5 * (1 + s) / (1 + kappa * (1 - s)) / tau`` for cosines ``s`` (any shape).

    ``kappa = 0`` gives the plain shifted cosine ``(1 + s) / 2``; a larger ``kappa`` pushes
    dissimilar pairs further down (a heavier tail). Logits lie in ``[0, 1 / tau]``.
    """
    return 0.5 * (1 + cosine) / (1 + kappa * (1 - cosine)) / tau


def symmetric_info_nce(z_a: torch.Tensor, z_b: torch.Tensor, kappa: float,
                       tau: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE between two views of the same B images, negatives from the batch.

    Args:
        z_a, z_b: (B, D) representations; row i of both comes from image i.
    Returns:
        The loss (scalar, float32; ``ln(B)`` when all representations are equal) and detached
        monitors: ``pos_sim`` / ``neg_sim`` (mean cosine of matching / non-matching pairs),
        ``sim_gap`` (their difference) and ``view_acc`` (fraction of views whose most similar
        view in the batch is their partner).
    """
    b = z_a.shape[0]
    # Why: float32 and autocast off, so bf16 rounding does not blur logits scaled by 1 / tau.
    with torch.autocast(z_a.device.type, enabled=False):
        cosine = F.normalize(z_a.float(), dim=-1) @ F.normalize(z_b.float(), dim=-1).T  # (B, B)
        logits = heavy_tailed_similarity(cosine, kappa, tau)
        targets = torch.arange(b, device=z_a.device)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    with torch.no_grad():
        eye = torch.eye(b, dtype=torch.bool, device=z_a.device)
        pos = cosine.diagonal().mean()
        if cosine.device.type == "cpu":
            neg = cosine[~eye].mean()
        else:  # Why: a boolean index sizes its output from the data, a host synchronization on a GPU
            neg = cosine.masked_fill(eye, 0).sum() / (b * (b - 1))
        hits = (logits.argmax(dim=1) == targets).float().mean() + (logits.argmax(dim=0) == targets).float().mean()
    return loss, {"pos_sim": pos, "neg_sim": neg, "sim_gap": pos - neg, "view_acc": hits / 2}


@dataclass
class MiCLConfig(BackboneConfig):
    """MiCL settings on top of the backbone sizes (the inherited decoder sizes are unused: MiCL has no decoder).

    Args:
        mask_ratio: fraction of patches hidden from both views; the ``1 - mask_ratio`` kept are
            split into two views of half that each. The paper hides 0.9 at 196 patches: we hide
            ``round(196 x 0.9) = 176`` and keep 20, 10 per view (the reference code keeps
            ``int(196 x 0.1) = 19``, 9 per view; docs/design.md, "Visible-patch count convention").
            With the tiny preset's 64 patches, keeping 25-50% (8-16 per view) works (METHODS.md
            section 3). At least 2 patches must survive.
        kappa: tail parameter of the similarity (paper: 1/64).
        tau: temperature of the similarity (paper: 0.07).
    """

    mask_ratio: float = 0.75
    kappa: float = 1 / 64
    tau: float = 0.07

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}; the paper uses 0.07")
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}; the paper uses 1/64 (0 = plain cosine)")
        view_size(self.num_patches, self.mask_ratio)  # raises for a ratio that gives no two views

    def view_size(self, mask_ratio: float | None = None) -> int:
        """Patches per view at ``mask_ratio`` (default: the config's)."""
        return view_size(self.num_patches, self.mask_ratio if mask_ratio is None else mask_ratio)


@register_model("micl")
class MaskedImageContrastive(ImageModel):
    """MiCL: two disjoint masked views per image, one shared encoder, symmetric InfoNCE on CLS tokens."""

    config_class = MiCLConfig

    def __init__(self, cfg: MiCLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)

    # ------------------------------------------------------------------ views
    def make_views(self, images: torch.Tensor, mask_ratio: float | None = None,
                   mask: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch indices of the two views: ``(ids_a, ids_b)``, each long (B, n), ascending, disjoint.

        Args:
            images: (B, 3, H, W), for the batch size and device.
            mask_ratio: fraction hidden from both views (default: the config's); with ``mask``
                it must match the mask's hidden count.
            mask: optional bool (B, L), True = hidden (e.g. the trainer's); the views split its
                visible patches.
            generator: random source of the split (and of the permutation without ``mask``).
        """
        b, num_patches = images.shape[0], self.cfg.num_patches
        n = self.cfg.view_size(mask_ratio)
        noise = torch.rand(b, num_patches, generator=generator,  # drawn on the generator's device
                           device=generator.device if generator is not None else images.device).to(images.device)
        if mask is not None:
            ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
            self.check_mask(mask, b, num_hidden(num_patches, ratio), ratio)
            noise = noise + mask.to(images.device, noise.dtype)  # Why: hidden patches (noise >= 1) sort last
        order = noise.argsort(dim=1)  # (B, L): surviving patches first, in random order
        return order[:, :n].sort(dim=1).values, order[:, n:2 * n].sort(dim=1).values

    def check_mask(self, mask: torch.Tensor, batch_size: int, hidden: int, mask_ratio: float) -> None:
        """Raise unless ``mask`` is bool (B, L) hiding exactly ``hidden`` patches per image.

        The count is read back only for CPU masks: on an accelerator it would stall the step
        (a host synchronization), so there it is trusted.
        """
        check_mask(mask, batch_size, self.cfg.num_patches)
        if mask.device.type == "cpu":
            counts = mask.sum(dim=1)
            if bool((counts != hidden).any()):
                raise ValueError(f"mask hides {sorted(set(counts.tolist()))} patches per image, but the views "
                                 f"need exactly {hidden} hidden at mask_ratio={mask_ratio}; pass the "
                                 "mask_ratio the mask was drawn with, or build the model with it")

    def view_masks(self, ids_a: torch.Tensor, ids_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool masks (B, L) of the two views, True = hidden from that view (for plots)."""
        hidden = torch.ones(ids_a.shape[0], self.cfg.num_patches, dtype=torch.bool, device=ids_a.device)
        return hidden.scatter(1, ids_a, False), hidden.scatter(1, ids_b, False)

    # ------------------------------------------------------------------ stages
    def forward_encoder(self, images: torch.Tensor, ids_a: torch.Tensor,
                        ids_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS representations of the two views: (B, 3, H, W), (B, n) x 2 -> (B, D) x 2.

        Both views go through the shared encoder as one batch of 2B sequences of n patches.
        """
        check_images(images, self.cfg)
        tokens = self.encoder.embed(images)  # (B, L, D), position embeddings added before masking
        views = torch.cat([gather_tokens(tokens, ids_a), gather_tokens(tokens, ids_b)])  # (2B, n, D)
        cls = self.encoder.forward_tokens(views)[:, 0]  # (2B, D): CLS after the final norm
        return cls.chunk(2)

    def forward_loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric InfoNCE with the heavy-tailed similarity: (B, D) x 2 -> loss, monitors."""
        return symmetric_info_nce(z_a, z_b, self.cfg.kappa, self.cfg.tau)

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None,
                concepts: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """Two views, encode, contrast. ``concepts`` is accepted for a uniform interface and unused.

        Returns:
            ``ModelOutput`` with ``losses = {"infonce", "pos_sim", "neg_sim", "sim_gap", "view_acc"}``
            and ``mask`` = the patches hidden from both views, bool (B, L).
        """
        check_images(images, self.cfg)
        if images.shape[0] < 2:
            raise ValueError(f"MiCL contrasts the images of a batch with each other, so it needs at least 2 "
                             f"images, got {images.shape[0]}; use batch_size >= 2 (large batches help)")
        ids_a, ids_b = self.make_views(images, mask_ratio, mask, generator)
        z_a, z_b = self.forward_encoder(images, ids_a, ids_b)
        loss, monitors = self.forward_loss(z_a, z_b)
        hidden_a, hidden_b = self.view_masks(ids_a, ids_b)
        return ModelOutput(loss=loss, losses={"infonce": loss.detach(), **monitors}, mask=hidden_a & hidden_b)


__all__ = ["MiCLConfig", "MaskedImageContrastive", "view_size", "heavy_tailed_similarity", "symmetric_info_nce"]
