"""Latent MIM: masked image modeling in latent space (paper 002), as specified in METHODS.md section 4.

An online encoder (the backbone's ``ViTEncoder``) reads the visible patches; a projector
MLP maps every token. A decoder predicts, at each hidden position, the latent that a
**target encoder** gives that hidden patch. The target encoder is an EMA copy of the
online encoder that sees **only the hidden patches**, so its latents carry nothing from
the visible context. The loss is a **patch-level InfoNCE within each image**: every
prediction must pick its own target among the image's hidden-patch targets.

Stages (MAE vocabulary): ``forward_encoder`` (online, visible patches), ``forward_target``
(EMA encoder, hidden patches), ``forward_latent_decoder`` (cross-attention decoder with
visual-cue queries), ``forward_loss``; ``after_step(progress)`` moves the EMA. The decoder
stage is not called ``forward_decoder``: in this package that name promises pixels
(B, L, p*p*3), and the CLI and ``evaluate.reconstruction_metrics`` look for it.

The paper's point is four ways this set-up collapses or learns nothing; each is a switch:

- ``target="online"``: no EMA, the online encoder also makes the targets and gets their
  gradient (joint online/target optimization); ``"stopgrad"``: the online encoder's
  current weights without gradient.
- ``loss="mse"``: plain regression of the target latents (a constant latent solves it).
- a low ``mask_ratio``: hidden patches sit next to visible ones and are predicted by copying.
- ``decoder="mae"``: MAE's decoder (mask tokens among the visible latents, self-attention only).

Collapse monitors (:func:`collapse_monitors`) are returned in ``losses`` every step, so the
trainer's history holds them. Measured at the tiny preset (notebook 06): latent MSE collapses to
one direction (cosine and rank -> 1); without the EMA the InfoNCE is solved by position, the
targets becoming a position code (position share -> 1) -- the within-image negatives all sit at
other positions.

Our choices (METHODS.md leaves them open; each is a switch):

- **visual cue**: the weights of the "position-weighted average of the visible latents" are
  a softmax of ``-d^2 / (2 cue_sigma^2)`` over the grid distance ``d`` (in patches) from the
  query to each visible patch (``visual_cue=False``: the mask token and position only).
- **similarity regularizer** (off by default): ``sim_reg_weight x (s - s*(t))^2`` where ``s`` is
  the mean pairwise cosine of each image's *visible* online tokens and the target ``s*(t)``
  decays on a cosine from ``sim_reg_start`` (0.75) to ``sim_reg_end`` (0.25) over training.
- **effective rank**: a participation ratio, no eigendecomposition (:func:`effective_rank`).
- **patch gaps** (off by default at this scale): ``patch_gap=g`` crops each patch at a random offset
  inside a ``(p + g)``-pixel cell (:func:`gap_patches`). Frozen features are read from plain images.
- ``loss="mse"`` regresses the raw target latents with the raw predictions (no
  standardization, no normalization): the naive latent regression the paper warns about.

Reference mode (``reference=True``, off by default) computes what the reference code computes,
checked end to end against it (``benchmarks/latent_mim_reference_check.py``; the differences are
in docs/design.md): position embeddings at positions ``i * g / (g - 1)`` in every encoder and the
decoder; a learned CLS query among the decoder's queries (dropped from the output); a context
LayerNorm in every decoder layer; the visual cue's weights a softmax of position-embedding products
``pe_hidden . pe_visible / sqrt(D_dec)``, averaging the visible latents without their positions;
projector LayerNorms with eps 1e-5; predictions standardized as ``(x - mean) / (std + 1e-4)`` (unbiased
std); the similarity regularizer on the predictions and the projected visible tokens (self-pairs
included); the mask token starts at zero. It implies the reference head (``target_projector=True``,
3 layers).

This module holds the config and the model. The loss and the monitors are in ``latent_mim_losses``;
patch gaps, the visual cue, position embeddings and the projector in ``latent_mim_layers``; this
module re-exports all of them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from mcm_core.masking import check_mask, num_hidden, random_mask
from mcm_core.models._registry import register_model
from mcm_core.models.backbone import (
    BackboneConfig, ViTEncoder, check_images, gather_tokens, init_weights, make_blocks, mask_ids,
)
from mcm_core.models.latent_mim_layers import (
    build_projector, gap_patches, grid_pos_embed, hidden_ids, reference_cue_weights, visual_cue,
    patch_coords,  # noqa: F401  (re-exported)
)
from mcm_core.models.latent_mim_losses import (
    collapse_monitors, effective_rank, latent_mse, mean_cosine_with_self, mean_pairwise_cosine, patch_info_nce,
    position_share, standardize_tokens,
    at_least_float32,  # noqa: F401  (re-exported)
)
from mcm_core.models.layers import ConceptDecoderBlock, cosine_schedule, decoder_input, ema_update, known_hidden
from mcm_core.models.outputs import EncoderOutput, ImageModel, ModelOutput

TARGETS = ("ema", "online", "stopgrad")
LOSSES = ("infonce", "mse")
DECODERS = ("cross", "mae")


@dataclass
class LatentMIMConfig(BackboneConfig):
    """Latent MIM settings on top of the backbone sizes.

    The decoder takes the preset's decoder sizes: ``tiny`` has the paper's depth 3 (64 wide);
    ``base`` has MAE's 8 x 512, so pass ``decoder_depth=3`` for the paper's ViT-B decoder.

    Args:
        mask_ratio: fraction of patches hidden (the paper: about 0.9 at 196 patches). At the tiny
            preset's 64 patches, 0.75 leaves 16 visible. At least 2 patches must be hidden.
        target: ``ema`` (the recipe), ``online`` (no EMA: the online encoder makes the targets and
            gets their gradient) or ``stopgrad`` (online weights, no gradient through the targets).
        momentum, momentum_end: the EMA momentum follows a cosine from ``momentum`` (0.99) at the
            start to ``momentum_end`` (1.0) at the end of training.
        loss: ``infonce`` (the recipe) or ``mse`` (regress the raw target latents).
        tau: InfoNCE temperature (paper 0.2); the loss is scaled by ``2 * tau``.
        standardize: standardize each image's predictions over its tokens before the InfoNCE.
        decoder: ``cross`` (queries at hidden positions self-attend, then cross-attend to the
            visible latents) or ``mae`` (MAE's decoder: mask tokens among the visible latents).
        visual_cue: add the position-weighted average of the visible latents to each query.
        cue_sigma: width, in patches, of the visual cue's Gaussian position weights.
        sim_reg_weight: weight of the similarity regularizer (0 = off); its target decays from
            ``sim_reg_start`` to ``sim_reg_end``.
        patch_gap: pixels of gap between neighbouring patches during training (0 = off).
        projector_depth, projector_dim: linear layers and hidden width of the projector (width 0 =
            ``mlp_ratio x embed_dim``). The default (2, 0) is timm's ``Mlp``; any other setting builds
            bias-free linear layers with a LayerNorm after each (GELU between), as the reference code's
            3-layer, 4096-wide head.
        target_projector: the target encoder's tokens also go through a projector (an EMA copy of the
            online one with ``target="ema"``), as in the reference code; off by default (the targets
            are the target encoder's own tokens).
        reference: compute what the reference code computes (see the module docstring): scaled
            positions, a learned decoder CLS query, per-layer context norms, the position-softmax
            visual cue, projector eps 1e-5, its standardization and regularizer. Off by default (our
            choices). Sets ``target_projector=True`` and, where the projector is left at timm's
            ``Mlp`` (depth 2, width 0), ``projector_depth=3``; its width stays ``projector_dim`` (the
            reference code's 4096 at ViT-B: pass ``projector_dim=4096``, and ``decoder_depth=3``).
    """

    mask_ratio: float = 0.75
    target: str = "ema"
    momentum: float = 0.99
    momentum_end: float = 1.0
    loss: str = "infonce"
    tau: float = 0.2
    standardize: bool = True
    decoder: str = "cross"
    visual_cue: bool = True
    cue_sigma: float = 1.0
    sim_reg_weight: float = 0.0
    sim_reg_start: float = 0.75
    sim_reg_end: float = 0.25
    patch_gap: int = 0
    projector_depth: int = 2
    projector_dim: int = 0
    target_projector: bool = False
    reference: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reference, bool):
            raise ValueError(f"reference must be True or False, got {self.reference!r}")
        if self.reference:  # the reference code's head: 3 layers, on the (EMA) targets too
            self.target_projector = True
            if (self.projector_depth, self.projector_dim) == (2, 0):
                self.projector_depth = 3
        for name, value, choices in (("target", self.target, TARGETS), ("loss", self.loss, LOSSES),
                                     ("decoder", self.decoder, DECODERS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
        if not 0.0 <= self.momentum <= self.momentum_end <= 1.0:
            raise ValueError(f"EMA momentum must satisfy 0 <= momentum <= momentum_end <= 1, got "
                             f"momentum={self.momentum}, momentum_end={self.momentum_end}; the paper uses 0.99 -> 1")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}; the paper uses 0.2")
        if not self.cue_sigma > 0:
            raise ValueError(f"cue_sigma must be > 0 (patches), got {self.cue_sigma}; e.g. 1.0")
        if self.sim_reg_weight < 0:
            raise ValueError(f"sim_reg_weight must be >= 0 (0 = off), got {self.sim_reg_weight}")
        if int(self.patch_gap) != self.patch_gap or self.patch_gap < 0:
            raise ValueError(f"patch_gap must be a non-negative int (pixels), got {self.patch_gap!r}; 0 = off")
        if int(self.projector_depth) != self.projector_depth or self.projector_depth < 1:
            raise ValueError(f"projector_depth must be an int >= 1 (linear layers), got {self.projector_depth!r}; "
                             "2 is the default, 3 the reference code's")
        if int(self.projector_dim) != self.projector_dim or self.projector_dim < 0:
            raise ValueError(f"projector_dim must be an int >= 0 (0 = mlp_ratio x embed_dim), got "
                             f"{self.projector_dim!r}; the reference code uses 4096 at ViT-B")
        check_hidden_count(num_hidden(self.num_patches, self.mask_ratio), self.num_patches, self.mask_ratio)


def check_hidden_count(hidden: int, num_patches: int, mask_ratio: float | str) -> None:
    """Raise unless at least 2 patches are hidden: each prediction needs another image patch to beat."""
    if hidden < 2:
        raise ValueError(f"Latent MIM predicts hidden patches and contrasts them within the image, so at least 2 "
                         f"of the {num_patches} patches must be hidden; mask_ratio={mask_ratio} hides {hidden}. "
                         f"Use mask_ratio >= {2 / num_patches:.3g}, e.g. 0.75")


# ---------------------------------------------------------------------- schedules
def ema_momentum(progress: float, start: float, end: float = 1.0) -> float:
    """Cosine momentum schedule: ``start`` at progress 0, ``end`` at progress 1 (BYOL's form)."""
    return cosine_schedule(float(progress), start, end)


def similarity_target(progress: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """The regularizer's target mean similarity: a cosine from ``start`` to ``end`` (tensor in, tensor out)."""
    return cosine_schedule(progress, start, end)


# ---------------------------------------------------------------------- the model
@register_model("latent_mim")
class LatentMIM(ImageModel):
    """Latent MIM: online encoder + projector on visible patches, EMA target on hidden patches, patch InfoNCE."""

    config_class = LatentMIMConfig

    def __init__(self, cfg: LatentMIMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, d_dec = cfg.embed_dim, cfg.decoder_embed_dim
        self.encoder = ViTEncoder(cfg)
        if cfg.reference:  # the buffer is not saved: it is rebuilt from the config
            self.encoder.pos_embed = grid_pos_embed(d, cfg.grid, scaled=True)[None]
        self.projector = build_projector(cfg)
        # The target encoder exists only with an EMA; "online" / "stopgrad" reuse self.encoder.
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if cfg.target == "ema" else None
        self.decoder_embed = nn.Linear(d, d_dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_dec))
        self.register_buffer("decoder_pos_embed", grid_pos_embed(d_dec, cfg.grid, scaled=cfg.reference)[None],
                             persistent=False)
        # Reference mode only (a default model and its checkpoints have neither): the decoder's learned
        # CLS query, and one context LayerNorm per decoder layer instead of one for all.
        self.decoder_cls_token = None
        if cfg.decoder == "cross":  # the layer MCM's decoder uses: self-attention, cross-attention, MLP
            if cfg.reference:
                self.decoder_cls_token = nn.Parameter(torch.zeros(1, 1, d_dec))
                self.context_norms = nn.ModuleList(nn.LayerNorm(d_dec, eps=1e-6) for _ in range(cfg.decoder_depth))
            else:
                self.context_norm = nn.LayerNorm(d_dec, eps=1e-6)
            self.decoder_blocks = nn.ModuleList(ConceptDecoderBlock(d_dec, cfg.decoder_num_heads, cfg.mlp_ratio)
                                                for _ in range(cfg.decoder_depth))
        else:
            self.decoder_blocks = make_blocks(d_dec, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(d_dec, eps=1e-6)
        self.decoder_pred = nn.Linear(d_dec, d)  # predicts a latent of the target encoder's width
        # Training progress in [0, 1] (set by after_step): drives the momentum and the regularizer target.
        self.register_buffer("progress", torch.zeros(()))
        for module in (self.projector, self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)  # MAE's initialisation; the encoder has its own
        if self.decoder_cls_token is not None:
            nn.init.normal_(self.decoder_cls_token, std=0.02)
        if not cfg.reference:  # the reference code's mask token starts at zero
            nn.init.normal_(self.mask_token, std=0.02)
        # The target's projector (reference code): an EMA copy of the initialised online one, or the online one.
        self.target_projector = (copy.deepcopy(self.projector).requires_grad_(False)
                                 if cfg.target_projector and cfg.target == "ema" else None)

    def scheduled_momentum(self) -> torch.Tensor:
        """The EMA momentum at the current progress, as a device scalar (read without a host sync)."""
        return cosine_schedule(self.progress, self.cfg.momentum, self.cfg.momentum_end)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called by the trainer after each optimizer step: record ``progress`` in (0, 1], move the EMA.

        target <- m * target + (1 - m) * online, with ``m = ema_momentum(progress)`` (the encoder, and
        the projector with ``target_projector``).
        """
        self.progress.fill_(progress)
        if self.target_encoder is not None:
            m = ema_momentum(progress, self.cfg.momentum, self.cfg.momentum_end)
            target, online = [self.target_encoder], [self.encoder]
            if self.target_projector is not None:
                target.append(self.target_projector)
                online.append(self.projector)
            ema_update(target, online, m)

    # ------------------------------------------------------------------ masking
    def resolve_mask(self, images: torch.Tensor, mask_ratio: float | None, generator: torch.Generator | None,
                     mask: torch.Tensor | None) -> torch.Tensor:
        """The given mask (validated) or MAE's random mask at ``mask_ratio``: bool (B, L), True = hidden."""
        if mask is None:
            ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
            check_hidden_count(num_hidden(self.cfg.num_patches, ratio), self.cfg.num_patches, ratio)
            return random_mask(images.shape[0], self.cfg.num_patches, ratio, generator=generator, device=images.device)
        check_mask(mask, images.shape[0], self.cfg.num_patches)
        return mask.to(images.device)

    # ------------------------------------------------------------------ stages
    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor,
                        hidden: int | None = None) -> tuple[EncoderOutput, torch.Tensor]:
        """Online encoder on the visible patches, then the projector.

        Args:
            images: (B, 3, H, W); mask: bool (B, L), True = hidden.
            hidden: patches the mask hides per image, if known (then a GPU mask is not read back).
        Returns:
            ``EncoderOutput`` whose ``tokens`` are the projected latents (B, 1 + N_vis, D), and the
            encoder's own visible patch tokens (B, N_vis, D) (before the projector; for the monitors).
        """
        ids_keep, ids_restore = mask_ids(mask, hidden)
        check_hidden_count(mask.shape[1] - ids_keep.shape[1], self.cfg.num_patches, "of the given mask")
        encoded = self.encoder.forward_tokens(gather_tokens(self.encoder.embed(images), ids_keep))  # (B, 1 + N_vis, D)
        return EncoderOutput(self.projector(encoded), mask, ids_keep, ids_restore), encoded[:, 1:]

    def forward_target(self, images: torch.Tensor, ids_hidden: torch.Tensor) -> torch.Tensor:
        """Target latents of the hidden patches, computed from the hidden patches alone: -> (B, N_h, D).

        Args:
            images: (B, 3, H, W); ids_hidden: (B, N_h) hidden patch indices.
        ``target="ema"`` and ``"stopgrad"`` give no gradient; ``"online"`` sends the loss's gradient
        through the targets into the online encoder.
        """
        encoder = self.target_encoder if self.target_encoder is not None else self.encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.target == "online"):
            hidden = gather_tokens(encoder.embed(images), ids_hidden)  # (B, N_h, D), positions added
            tokens = encoder.forward_tokens(hidden)  # (B, 1 + N_h, D)
            if self.cfg.target_projector:  # reference code: the head on every token, CLS included
                projector = self.target_projector if self.target_projector is not None else self.projector
                tokens = projector(tokens)
            return tokens[:, 1:]

    def decoder_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoder position embeddings of patches ``ids`` (B, N) -> (B, N, D_dec)."""
        return gather_tokens(self.decoder_pos_embed[:, 1:].expand(ids.shape[0], -1, -1), ids)

    def decoder_context(self, encoded: EncoderOutput) -> torch.Tensor:
        """Visible latents at decoder width with their positions: (B, 1 + N_vis, D_dec) (CLS first)."""
        x = self.decoder_embed(encoded.tokens)
        cls_pos = self.decoder_pos_embed[:, :1].expand(x.shape[0], -1, -1)  # zeros
        return x + torch.cat([cls_pos, self.decoder_positions(encoded.ids_keep)], dim=1)

    def forward_latent_decoder(self, encoded: EncoderOutput, ids_hidden: torch.Tensor) -> torch.Tensor:
        """Predict the target latent of every hidden patch: -> (B, N_h, D)."""
        if self.cfg.decoder == "mae":
            # MAE's decoder input (mask tokens un-shuffled among the visible latents), read at the hidden patches.
            x = decoder_input(self.decoder_embed(encoded.tokens), encoded.ids_restore, self.mask_token,
                              self.decoder_pos_embed)  # (B, 1 + L, D_dec)
            for block in self.decoder_blocks:
                x = block(x)
            return self.decoder_pred(self.decoder_norm(gather_tokens(x[:, 1:], ids_hidden)))
        if self.cfg.reference:
            return self.reference_latent_decoder(encoded, ids_hidden)
        context = self.decoder_context(encoded)  # (B, 1 + N_vis, D_dec)
        queries = self.mask_token + self.decoder_positions(ids_hidden)
        if self.cfg.visual_cue:
            queries = queries + visual_cue(context[:, 1:], encoded.ids_keep, ids_hidden, self.cfg.grid,
                                           self.cfg.cue_sigma)
        context = self.context_norm(context)  # keys/values: visible latents, never updated
        for block in self.decoder_blocks:
            queries = block(queries, context)[0]
        return self.decoder_pred(self.decoder_norm(queries))

    def reference_latent_decoder(self, encoded: EncoderOutput, ids_hidden: torch.Tensor) -> torch.Tensor:
        """The reference code's cross decoder (``reference=True``): -> (B, N_h, D).

        Queries: a learned CLS query, then at each hidden patch the mask token plus the visual cue
        (``reference_cue_weights`` over the visible latents at decoder width, without positions),
        plus its position. Every layer normalizes the context with its own LayerNorm.
        """
        x = self.decoder_embed(encoded.tokens)  # (B, 1 + N_vis, D_dec)
        b = x.shape[0]
        pos_visible, pos_hidden = self.decoder_positions(encoded.ids_keep), self.decoder_positions(ids_hidden)
        queries = self.mask_token.expand(b, ids_hidden.shape[1], -1)
        if self.cfg.visual_cue:
            queries = queries + (reference_cue_weights(pos_hidden, pos_visible).to(x.dtype) @ x[:, 1:])
        cls = self.decoder_cls_token + self.decoder_pos_embed[:, :1]  # the CLS position is zeros
        queries = torch.cat([cls.expand(b, -1, -1), queries + pos_hidden], dim=1)  # (B, 1 + N_h, D_dec)
        context = x + torch.cat([self.decoder_pos_embed[:, :1].expand(b, -1, -1), pos_visible], dim=1)
        for block, norm in zip(self.decoder_blocks, self.context_norms):
            queries = block(queries, norm(context))[0]
        return self.decoder_pred(self.decoder_norm(queries[:, 1:]))

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor,
                     projected: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and its named terms.

        Args:
            pred, target: (B, N_h, D); visible: (B, N_vis, D) online tokens (for the regularizer).
            projected: (B, N_vis, D) the projector's visible tokens; the regularizer reads them (and
                ``pred``) in reference mode, where they are required when ``sim_reg_weight > 0``.
        """
        cfg = self.cfg
        if cfg.loss == "infonce":
            loss, accuracy = patch_info_nce(pred, target, cfg.tau, cfg.standardize, reference=cfg.reference)
            terms = {"infonce": loss.detach(), "patch_acc": accuracy}
        else:
            loss = latent_mse(pred, target)
            terms = {"mse": loss.detach()}
        if cfg.sim_reg_weight > 0 and (cfg.reference or visible.shape[1] > 1):
            goal = similarity_target(self.progress, cfg.sim_reg_start, cfg.sim_reg_end)
            with torch.autocast(visible.device.type, enabled=False):
                if cfg.reference:  # the reference code: predictions and projected visible tokens, self-pairs in
                    if projected is None:
                        raise ValueError("reference mode's similarity regularizer needs the projected visible tokens")
                    reg = (mean_cosine_with_self(pred) - goal).pow(2) + (mean_cosine_with_self(projected) - goal).pow(2)
                else:
                    reg = (mean_pairwise_cosine(visible) - goal).pow(2)
            loss = loss + cfg.sim_reg_weight * reg
            terms["sim_reg"] = reg.detach()
        return loss, terms

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None,
                concepts: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """Encode the visible patches, predict the hidden patches' target latents, score.

        Args:
            images: (B, 3, H, W) in [0, 1]; mask: optional bool (B, L), True = hidden (else a random
                mask at ``mask_ratio`` from ``generator``); generator: also draws the patch-gap offsets.
            mask_ratio: with ``mask``, the ratio it was drawn at, if known (on a GPU its hidden
                count is then trusted, not read back).
            concepts: accepted for a uniform interface and unused.
        Returns:
            ``ModelOutput`` with ``mask`` and ``losses``: the loss term (``infonce`` with
            ``patch_acc``, or ``mse``), the collapse monitors (see ``collapse_monitors``) and, with
            an EMA target, ``momentum`` (the schedule's value at the progress reached before this step).
        """
        check_images(images, self.cfg)
        hidden = known_hidden(self.cfg, images, mask_ratio, mask)  # None on CPU: counts checked
        mask = self.resolve_mask(images, mask_ratio, generator, mask)
        images = gap_patches(images, self.cfg.patch_size, self.cfg.patch_gap, generator)  # one draw for both encoders
        encoded, visible = self.forward_encoder(images, mask, hidden)
        ids_hidden = hidden_ids(mask, encoded.ids_keep.shape[1])
        target = self.forward_target(images, ids_hidden)
        pred = self.forward_latent_decoder(encoded, ids_hidden)
        loss, terms = self.forward_loss(pred, target, visible, encoded.tokens[:, 1:])
        terms.update(collapse_monitors(target, pred, visible, ids_hidden, self.cfg.num_patches))
        if self.target_encoder is not None:
            terms["momentum"] = self.scheduled_momentum()
        return ModelOutput(loss=loss, losses=terms, mask=mask)

    # ------------------------------------------------------------------ analysis (features: the online encoder's)
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Online encoder's patch tokens of full images, for per-image clustering: (B, 3, H, W) -> (B, L, D)."""
        check_images(images, self.cfg)
        return self.encoder.forward_features(images)[:, 1:]


__all__ = [
    "LatentMIMConfig", "LatentMIM", "patch_info_nce", "latent_mse", "standardize_tokens", "mean_pairwise_cosine",
    "effective_rank", "position_share", "collapse_monitors", "ema_momentum", "similarity_target", "gap_patches",
    "visual_cue", "hidden_ids", "mean_cosine_with_self", "reference_cue_weights", "grid_pos_embed",
]
