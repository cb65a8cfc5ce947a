"""MAE: the masked-autoencoder baseline (He et al. 2022).

The stages keep the names of the MAE reference code: ``patchify``,
``unpatchify``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``.
The mask is boolean ``(B, L)`` with ``True`` = hidden from the encoder.

The output types (``EncoderOutput``, ``ModelOutput``) live in :mod:`mcm_core.models.outputs` and
the shared pieces (``decoder_input``, ``known_hidden``) in :mod:`mcm_core.models.layers`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mcm_core.masking import check_mask, num_hidden, random_mask
from mcm_core.models._registry import register_model
from mcm_core.models.backbone import (
    BackboneConfig, ViTEncoder, check_images, gather_tokens, init_weights, make_blocks, mask_ids,
    masked_mean, sincos_pos_embed,
)
from mcm_core.models.layers import decoder_input, known_hidden
from mcm_core.models.outputs import NORM_PIX_PROBLEM, EncoderOutput, ImageModel, ModelOutput
from mcm_core.models.pixel_head import (
    PIXEL_HEADS, PIXEL_LOSSES, build_pixel_head, grid_to_patches, palette_cross_entropy, palette_pixels,
    patches_to_grid,
)


@dataclass
class MAEConfig(BackboneConfig):
    """MAE settings on top of the backbone sizes.

    Args:
        mask_ratio: fraction of patches hidden during training (paper default 0.75).
        norm_pix_loss: regress per-patch normalized pixels instead of raw pixels.
        visible_loss_weight: (our choice) weight of the same loss on the visible patches, added to the
            hidden patches' mean (0 = MAE's loss on hidden patches only; the MAE paper's "all patches"
            ablation is close to 1). Reconstructions show only hidden predictions either way.
        pixel_head: (our choice) the decoder's last step: ``linear`` (MAE's, each patch from its own
            token) or ``conv`` (that plus a convolutional residual on the pixel grid, so edges can
            cross patch borders; :mod:`mcm_core.models.pixel_head`).
        pixel_head_channels, pixel_head_layers: the conv head's width and number of 3x3 convolutions.
        pixel_head_context: the conv head also reads the visible pixels (hidden patches zeroed) and the
            mask, as an inpainting network would (measured: it copies the visible colour and breaks edits).
        pixel_loss: (our choice) ``mse`` (MAE's squared error) or ``palette``: the linear head predicts,
            for every pixel, logits over the colours of ``pixel_palette`` (a colour codebook, as iGPT's
            9-bit palette), trained with cross-entropy against each target pixel's nearest colour; the
            predicted pixels are the expected colour under those logits (the squared-error optimum of the
            model's belief). ``forward_decoder`` still returns pixels.
        pixel_palette: the K >= 2 colours of ``pixel_loss="palette"``, each ``in_chans`` values in [0, 1]
            (training fills it from a data set's ``pixel_palette``, e.g. the built-in shapes data's).
    """

    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    visible_loss_weight: float = 0.0
    pixel_head: str = "linear"
    pixel_head_channels: int = 32
    pixel_head_layers: int = 3
    pixel_head_context: bool = False
    pixel_loss: str = "mse"
    pixel_palette: list[list[float]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.visible_loss_weight >= 0:
            raise ValueError(f"visible_loss_weight must be >= 0 (0 = hidden patches only), got {self.visible_loss_weight}")
        if self.pixel_head not in PIXEL_HEADS:
            raise ValueError(f"unknown pixel_head {self.pixel_head!r}; choose one of {list(PIXEL_HEADS)}")
        if self.pixel_head_context and self.pixel_head != "conv":
            raise ValueError("pixel_head_context=True needs pixel_head='conv' (the linear head reads tokens only); "
                             "set pixel_head='conv' or drop pixel_head_context")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"unknown pixel_loss {self.pixel_loss!r}; choose one of {list(PIXEL_LOSSES)}")
        if self.pixel_loss == "palette":
            self.check_palette()
        if self.pixel_head_channels < 1 or self.pixel_head_layers < 1:
            raise ValueError(f"pixel_head_channels and pixel_head_layers must be >= 1, got {self.pixel_head_channels} "
                             f"and {self.pixel_head_layers}; e.g. 32 and 3")

    def check_palette(self) -> None:
        """Raise ValueError unless ``pixel_palette`` suits ``pixel_loss="palette"`` (and the other settings do)."""
        palette = self.pixel_palette
        if (not isinstance(palette, (list, tuple)) or len(palette) < 2
                or any(not isinstance(c, (list, tuple)) or len(c) != self.in_chans for c in palette)
                or any(not isinstance(v, (int, float)) or not 0 <= v <= 1 for c in palette for v in c)):
            raise ValueError(f"pixel_loss='palette' needs pixel_palette: at least 2 colours of {self.in_chans} values "
                             f"in [0, 1] each, e.g. [[0.9, 0.1, 0.1], [0.1, 0.1, 0.1]]; got {palette!r}. Training "
                             "on the built-in shapes data fills it in; for other data give model.pixel_palette")
        if self.pixel_head != "linear" or self.norm_pix_loss:
            raise ValueError("pixel_loss='palette' predicts colours with the linear head on raw pixels: set "
                             "pixel_head='linear' and norm_pix_loss=False, or use pixel_loss='mse'")


@register_model("mae")
class MaskedAutoencoder(ImageModel):
    """MAE: encoder on visible patches, light decoder with mask tokens, MSE on hidden patches."""

    config_class = MAEConfig
    reconstructs_pixels = True

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(cfg.decoder_embed_dim, cfg.grid)[None],
                             persistent=False)
        self.decoder_blocks = self.build_decoder_blocks(cfg)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=1e-6)
        per_pixel = len(cfg.pixel_palette) if cfg.pixel_loss == "palette" else cfg.in_chans  # logits or values
        self.decoder_pred = build_pixel_head(cfg.pixel_head, cfg.decoder_embed_dim, cfg.patch_size, per_pixel, cfg.grid,
                                             cfg.pixel_head_channels, cfg.pixel_head_layers, cfg.pixel_head_context)
        palette = torch.tensor(cfg.pixel_palette or [], dtype=torch.float32).reshape(-1, cfg.in_chans)
        self.register_buffer("palette", palette, persistent=False)  # (K, C); empty with the squared error
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)  # linears and norms only: the conv head's zero-initialized output stays zero
        nn.init.normal_(self.mask_token, std=0.02)

    def build_decoder_blocks(self, cfg: MAEConfig) -> nn.ModuleList:
        """Plain self-attention decoder blocks (MCM overrides this)."""
        return make_blocks(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio)

    # ------------------------------------------------------------------ patches
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels (row, col, channel)."""
        return grid_to_patches(images, self.cfg.patch_size, self.cfg.grid)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W); the inverse of ``patchify``."""
        return patches_to_grid(patches, self.cfg.patch_size, self.cfg.grid, self.cfg.in_chans)

    # ------------------------------------------------------------------ masking
    def make_mask(self, images: torch.Tensor, mask_ratio: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """MAE's random mask for this batch: bool (B, L), exactly ``round(L * ratio)`` hidden per image."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        return random_mask(images.shape[0], self.cfg.num_patches, ratio, generator=generator,
                           device=images.device)

    def resolve_mask(self, images: torch.Tensor, mask_ratio: float | None,
                     generator: torch.Generator | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The given mask (validated) or a fresh random one: bool (B, L)."""
        if mask is None:
            return self.make_mask(images, mask_ratio, generator)
        check_mask(mask, images.shape[0], self.cfg.num_patches)
        return mask.to(images.device)

    # ------------------------------------------------------------------ stages
    def forward_encoder(self, images: torch.Tensor, mask_ratio: float | None = None,
                        generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                        return_attention: bool = False) -> EncoderOutput:
        """Encode the visible patches of ``images`` (B, 3, H, W).

        Args:
            mask_ratio: fraction hidden (default: the config's). With ``mask``, the ratio the mask
                was drawn at, if known: on a GPU its hidden count is then trusted, not read back.
            generator: random source of the mask.
            mask: an external bool (B, L) mask from any strategy in ``mcm_core.masking``.
        """
        check_images(images, self.cfg)
        hidden = known_hidden(self.cfg, images, mask_ratio, mask)
        mask = self.resolve_mask(images, mask_ratio, generator, mask)
        ids_keep, ids_restore = mask_ids(mask, hidden)
        visible = gather_tokens(self.encoder.embed(images), ids_keep)  # (B, N_vis, D)
        encoded = self.encode_visible(visible, mask, ids_keep, ids_restore, return_attention)
        if self.cfg.pixel_head_context:
            encoded.visible_pixels = self.patchify(images).masked_fill(mask[..., None], 0.0)
        return encoded

    def encode_visible(self, visible: torch.Tensor, mask: torch.Tensor, ids_keep: torch.Tensor,
                       ids_restore: torch.Tensor, return_attention: bool = False) -> EncoderOutput:
        """Run the encoder blocks on visible tokens (B, N_vis, D) (MCM overrides this)."""
        return EncoderOutput(self.encoder.forward_tokens(visible), mask, ids_keep, ids_restore)

    def decoder_input(self, encoded: EncoderOutput) -> torch.Tensor:
        """Decoder tokens in image order: (B, 1 + L, D_dec), mask tokens at hidden positions (:func:`decoder_input`)."""
        return decoder_input(self.decoder_embed(encoded.tokens), encoded.ids_restore, self.mask_token,
                             self.decoder_pos_embed)

    def forward_decoder(self, encoded: EncoderOutput, raw: bool = False) -> torch.Tensor:
        """Predict every patch: -> pixels (B, L, p*p*3), or with ``raw`` the head's output for ``forward_loss``
        (the same pixels, or palette logits (B, L, p*p*K) with ``pixel_loss="palette"``)."""
        x = self.decoder_input(encoded)
        for block in self.decoder_blocks:
            x = block(x)
        out = self.head_output(x, encoded)
        return out if raw else self.to_pixels(out)

    def to_pixels(self, out: torch.Tensor) -> torch.Tensor:
        """The pixel head's output -> pixels (B, L, p*p*3): itself, or the expected palette colour of its logits."""
        return palette_pixels(out, self.palette) if self.cfg.pixel_loss == "palette" else out

    def head_output(self, x: torch.Tensor, encoded: EncoderOutput) -> torch.Tensor:
        """The last decoder stage: tokens (B, 1 + L, D_dec), class token first -> patches (B, L, p*p*3), or
        palette logits (B, L, p*p*K) with ``pixel_loss="palette"``."""
        tokens = self.decoder_norm(x)[:, 1:]
        if not self.cfg.pixel_head_context:
            return self.decoder_pred(tokens)
        if encoded.visible_pixels is None:
            raise ValueError("this model's pixel head reads the visible pixels, but the encoder output has none; "
                             "build it with model.forward_encoder(images, ...), which fills visible_pixels")
        return self.decoder_pred(tokens, encoded.visible_pixels, encoded.mask)

    def loss_target(self, images: torch.Tensor) -> torch.Tensor:
        """Regression target (B, L, p*p*3): pixels, or per-patch normalized pixels with ``norm_pix_loss``."""
        target = self.patchify(images)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on hidden patches (plus ``visible_loss_weight`` x the visible patches' MSE); on all patches
        when nothing is hidden (mask ratio 0). With ``pixel_loss="palette"``: the same, per pixel the
        cross-entropy of the palette logits against the target pixel's nearest palette colour.

        Args:
            images: (B, 3, H, W); pred: the head's output ``forward_decoder(encoded, raw=True)``, (B, L, p*p*3)
                or palette logits (B, L, p*p*K); mask: bool (B, L).
        """
        if self.cfg.pixel_loss == "palette":
            expected = self.cfg.patch_size ** 2 * self.palette.shape[0]
            if pred.shape[-1] != expected:
                raise ValueError(f"this model scores palette logits (last dim {expected}), got {pred.shape[-1]} values "
                                 "per patch; pass forward_decoder(encoded, raw=True), not the pixels")
            per_patch = palette_cross_entropy(pred, self.patchify(images), self.palette)  # (B, L)
        else:
            per_patch = ((pred - self.loss_target(images)) ** 2).mean(dim=-1)  # (B, L)
        loss = masked_mean(per_patch, mask)
        if self.cfg.visible_loss_weight > 0:
            loss = loss + self.cfg.visible_loss_weight * masked_mean(per_patch, ~mask)
        return loss

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None,
                concepts: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """Encode, decode, score. ``concepts`` is accepted for a uniform interface and unused by MAE."""
        encoded = self.forward_encoder(images, mask_ratio, generator, mask)
        out = self.forward_decoder(encoded, raw=True)
        loss = self.forward_loss(images, out, encoded.mask)
        return ModelOutput(loss=loss, losses={"recon": loss.detach()}, pred=self.to_pixels(out), mask=encoded.mask)

    # ------------------------------------------------------------------ helpers for analysis
    def composite(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visible patches from the input, hidden patches from ``pred``: -> (B, 3, H, W) in [0, 1].

        Needs ``norm_pix_loss=False`` (normalized predictions have no pixel scale).
        """
        if self.cfg.norm_pix_loss:
            raise ValueError(NORM_PIX_PROBLEM)
        patches = torch.where(mask.unsqueeze(-1), pred, self.patchify(images))
        return self.unpatchify(patches).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the hidden patches: -> (images (B, 3, H, W), mask (B, L))."""
        encoded = self.forward_encoder(images, mask_ratio, generator, mask)
        return self.composite(images, self.forward_decoder(encoded), encoded.mask), encoded.mask

    def visible_count(self, mask_ratio: float) -> int:
        """Number of patches the encoder sees at ``mask_ratio``."""
        return self.cfg.num_patches - num_hidden(self.cfg.num_patches, mask_ratio)
