"""MCM: Multi-layer Concept Map (paper 000), as specified in METHODS.md section 2.

An MAE whose encoder also carries K learnable concept tokens. After every encoder
layer a cross-attention block updates the concept tokens from that layer's patch
tokens (concepts never attend to each other, which keeps them disentangled), and
a snapshot of the tokens is kept. The decoder is half as deep as the encoder;
each decoder layer cross-attends to the snapshots of two encoder layers (the
"multi-layer concept map"), so the reconstruction loss sends gradients into the
concept tokens. A concept loss on learned state embeddings names the concepts;
editing writes a state embedding into a token before decoding.

Every choice the paper leaves open is a config switch, marked "(our choice)". The attention
blocks (``CrossAttention``, ``ConceptBlock``, ``ConceptDecoderBlock``) live in
:mod:`mcm_core.models.layers` (Latent MIM's decoder uses the last one); this module imports them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcm_core.models._registry import register_model
from mcm_core.models.backbone import init_weights
from mcm_core.models.layers import ConceptBlock, ConceptDecoderBlock, CrossAttention  # noqa: F401  (re-exported)
from mcm_core.models.losses import concept_prior, register_concept_weights, weighted_concept_bce
from mcm_core.models.mae import MAEConfig, MaskedAutoencoder
from mcm_core.models.outputs import EncoderOutput, ModelOutput

KEEP = -1  # edit state: leave the image's own concept token as it is (0 / 1: write that state)
EditsLike = Mapping[int, int] | Sequence[int] | torch.Tensor
PAIRINGS = ("mirror", "sequential")
MERGES = ("concat", "mean")
CONCEPT_HEADS = ("states", "linear")


@dataclass
class MCMConfig(MAEConfig):
    """MCM settings on top of MAE's.

    Args:
        mask_ratio: training mask ratio (the paper's main setting is 0.25).
        num_concepts: K, the number of binary concepts (and concept tokens).
        concept_names: optional names of the K concepts (for plots).
        concept_freq: optional prior frequency of each concept; the concept loss weights
            positives by 0.5 / f and negatives by 0.5 / (1 - f), so rare concepts count.
        pairing: (our choice) which two encoder layers feed each decoder layer:
            ``mirror`` (decoder layer j reads encoder layers depth-2j-2 and depth-2j-1: deep
            concepts first, fine ones last) or ``sequential`` (layers 2j and 2j+1).
        merge: (our choice) ``concat`` the two snapshots as 2K keys/values, or take their ``mean``.
        concept_head: (our choice) ``states``: logits from cos(z_k, e_k+) - cos(z_k, e_k-) with
            learned state embeddings (stand-in for the paper's CLIP text targets); ``linear``:
            a per-concept linear read-out (plain BCE head).
        concept_weight: weight of the concept loss on the final snapshot.
        aux_concept_weight: (our choice) weight of the same loss averaged over the earlier
            snapshots, so every snapshot has meaningful state embeddings to edit with (0 = off).
        disentangle_weight: weight of the optional disentanglement loss (0 = off): flip one
            concept per image to its opposite state, decode, re-encode, and ask the re-encoded
            prediction to follow the flip.
        counterfactual_weight: (our choice, beyond the paper) weight of the counterfactual edit loss
            (0 = off): for data that can render each image with one concept group changed (the
            built-in shapes data), write that edit into the concept tokens (``apply_edits``, exactly
            as ``edit`` does), decode once more from the same encoder pass, and regress the hidden
            patches onto the counterfactual image. It teaches the decoder to follow the concept
            tokens where the visible patches disagree with them; it costs one extra decoder pass.
    """

    mask_ratio: float = 0.25
    num_concepts: int = 13
    concept_names: list[str] | None = None
    concept_freq: list[float] | None = None
    pairing: str = "mirror"
    merge: str = "concat"
    concept_head: str = "states"
    concept_weight: float = 1.0
    aux_concept_weight: float = 0.5
    disentangle_weight: float = 0.0
    counterfactual_weight: float = 0.0

    # The decoder depth is derived (half the encoder); presets do not set it.
    derived_fields = ("decoder_depth",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth % 2:
            raise ValueError(f"MCM pairs two encoder layers per decoder layer, so depth must be even, got {self.depth}")
        if self.decoder_depth != self.depth // 2:
            raise ValueError(f"MCM's decoder is half as deep as the encoder: decoder_depth must be "
                             f"{self.depth // 2} for depth={self.depth}, got {self.decoder_depth}")
        for name, value, choices in (("pairing", self.pairing, PAIRINGS), ("merge", self.merge, MERGES),
                                     ("concept_head", self.concept_head, CONCEPT_HEADS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
        if self.concept_names is not None and len(self.concept_names) != self.num_concepts:
            raise ValueError(f"concept_names has {len(self.concept_names)} names but num_concepts={self.num_concepts}")
        if self.concept_freq is not None and len(self.concept_freq) != self.num_concepts:
            raise ValueError(f"concept_freq has {len(self.concept_freq)} values but num_concepts={self.num_concepts}")
        for name in ("disentangle_weight", "counterfactual_weight"):
            if getattr(self, name) > 0 and self.norm_pix_loss:
                raise ValueError(f"{name} > 0 decodes images, which needs norm_pix_loss=False")


def check_binary_concepts(concepts: torch.Tensor) -> None:
    """Raise unless every value of the concept targets ``concepts`` (B, K) is 0 or 1 (reads the values back)."""
    if not ((concepts == 0) | (concepts == 1)).all():
        bad = sorted({round(float(v), 4) for v in concepts[(concepts != 0) & (concepts != 1)][:100].tolist()})
        raise ValueError(f"concept targets must be 0 or 1, got values such as {bad[:3]}; threshold "
                         "soft labels (concepts > 0.5).float() and map -1/1 labels with (labels > 0).float()")


def concept_states(edits: EditsLike, num_concepts: int, batch_size: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Normalize concept edits to a new long (B, K) tensor of -1 (``KEEP``), 0 or 1.

    Args:
        edits: ``{concept_index: state}`` for every image (the other concepts kept), K states for
            every image (a list or a (K,) tensor), or a (B, K) tensor.
        device: where the result lives (default: the edits' device; the CPU for a dict or a list).
    """
    if isinstance(edits, Mapping):
        states = torch.full((num_concepts,), KEEP, dtype=torch.long)
        for index, value in edits.items():
            if not 0 <= int(index) < num_concepts:
                raise ValueError(f"concept index {index} out of range; this model has {num_concepts} concepts "
                                 f"(indices 0 to {num_concepts - 1})")
            if value not in (KEEP, 0, 1):
                raise ValueError(f"concept {index}: a state must be -1 (leave the concept alone), 0 or 1, "
                                 f"got {value!r}")
            states[int(index)] = int(value)
    else:
        states = torch.as_tensor(edits)
    if states.ndim == 1:
        if states.shape[0] != num_concepts:
            raise ValueError(f"got {states.shape[0]} concept states but the model has {num_concepts} concepts; "
                             "pass one state per concept (-1 = keep, 0 = off, 1 = on)")
        states = states.expand(batch_size, -1)
    if tuple(states.shape) != (batch_size, num_concepts):
        raise ValueError(f"concept states must have shape (K,) = ({num_concepts},) or (B, K) = "
                         f"{(batch_size, num_concepts)}, got {tuple(states.shape)}")
    if not bool(((states == KEEP) | (states == 0) | (states == 1)).all()):
        raise ValueError(f"concept state values must be -1 (leave the concept alone), 0 or 1, got "
                         f"{sorted(set(states.flatten().tolist()))[:5]}")
    return states.to(device=device, dtype=torch.long).clone()


def concept_map(depth: int, pairing: str) -> list[tuple[int, int]]:
    """The multi-layer concept map: for each decoder layer, the two encoder layers it reads."""
    if pairing == "mirror":
        return [(depth - 2 * j - 2, depth - 2 * j - 1) for j in range(depth // 2)]
    return [(2 * j, 2 * j + 1) for j in range(depth // 2)]


@register_model("mcm")
class MultiLayerConceptMap(MaskedAutoencoder):
    """MCM: MAE + concept tokens updated at every encoder layer + a concept-map decoder."""

    config_class = MCMConfig
    uses_concepts = True
    can_edit = True

    def __init__(self, cfg: MCMConfig) -> None:
        super().__init__(cfg)
        d, k = cfg.embed_dim, cfg.num_concepts
        self.concept_tokens = nn.Parameter(torch.randn(k, d) * 0.02)  # (K, D), shared across images
        self.concept_blocks = nn.ModuleList(ConceptBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.concept_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-6) for _ in range(cfg.depth))
        self.concept_to_decoder = nn.Linear(d, cfg.decoder_embed_dim)
        states = 2 if cfg.concept_head == "states" else 1
        self.state_embed = nn.Parameter(torch.randn(cfg.depth, k, states, d) * 0.02)  # (depth, K, S, D)
        prior = concept_prior(cfg.concept_freq, k)
        self.concept_bias = nn.Parameter(torch.logit(prior).repeat(cfg.depth, 1))  # (depth, K), starts at the prior
        # Cosine scores live in [-2, 2]; a learned scale turns them into confident logits.
        self.concept_log_scale = nn.Parameter(torch.tensor(2.0 if cfg.concept_head == "states" else 0.0))
        register_concept_weights(self, prior)
        for module in (self.concept_blocks, self.concept_norms, self.concept_to_decoder):
            module.apply(init_weights)

    def build_decoder_blocks(self, cfg: MCMConfig) -> nn.ModuleList:
        return nn.ModuleList(ConceptDecoderBlock(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio)
                             for _ in range(cfg.decoder_depth))

    @property
    def concept_map(self) -> list[tuple[int, int]]:
        """For each decoder layer j, the pair of encoder layers whose snapshots it reads."""
        return concept_map(self.cfg.depth, self.cfg.pairing)

    # ------------------------------------------------------------------ encoder
    def encode_visible(self, visible: torch.Tensor, mask: torch.Tensor, ids_keep: torch.Tensor,
                       ids_restore: torch.Tensor, return_attention: bool = False) -> EncoderOutput:
        """Encoder blocks interleaved with concept blocks; keeps one normalized snapshot per layer."""
        x = self.encoder.prepend_cls(visible)
        concepts = self.concept_tokens.expand(x.shape[0], -1, -1)
        snapshots, attention = [], []
        for block, concept_block, norm in zip(self.encoder.blocks, self.concept_blocks, self.concept_norms):
            x = block(x)
            concepts, probs = concept_block(concepts, x[:, 1:], return_attention)  # patches only, not CLS
            snapshots.append(norm(concepts))
            attention.append(probs)
        return EncoderOutput(self.encoder.norm(x), mask, ids_keep, ids_restore, concepts=snapshots,
                             attention=attention if return_attention else None)

    # ------------------------------------------------------------------ decoder
    def decoder_context(self, snapshots: list[torch.Tensor]) -> list[torch.Tensor]:
        """Keys/values per decoder layer: two snapshots, projected and merged -> (B, 2K or K, D_dec)."""
        context = []
        for a, b in self.concept_map:
            pair = (self.concept_to_decoder(snapshots[a]), self.concept_to_decoder(snapshots[b]))
            context.append(torch.cat(pair, dim=1) if self.cfg.merge == "concat" else (pair[0] + pair[1]) / 2)
        return context

    def decode(self, encoded: EncoderOutput, return_attention: bool = False,
               raw: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """-> predictions (B, L, p*p*3) (with ``raw``: the head's output, see ``forward_decoder``) and, on request,
        per decoder layer patch -> concept attention (B, heads, L, 2K) (or K with ``merge="mean"``)."""
        x = self.decoder_input(encoded)
        attention = []
        for block, context in zip(self.decoder_blocks, self.decoder_context(encoded.concepts)):
            x, probs = block(x, context, return_attention)
            attention.append(probs[:, :, 1:] if return_attention else None)
        out = self.head_output(x, encoded)
        return (out if raw else self.to_pixels(out)), (attention if return_attention else None)

    def forward_decoder(self, encoded: EncoderOutput, raw: bool = False) -> torch.Tensor:
        """Predict every patch from visible tokens and the concept map: -> (B, L, p*p*3) (``raw``: the head's
        output for ``forward_loss``, palette logits with ``pixel_loss="palette"``)."""
        return self.decode(encoded, raw=raw)[0]

    # ------------------------------------------------------------------ concepts
    def state_vectors(self) -> torch.Tensor:
        """Per layer and concept, the vectors of state 0 and state 1: (depth, K, 2, D)."""
        if self.cfg.concept_head == "states":
            return self.state_embed
        w = self.state_embed[:, :, 0]
        return torch.stack([-w, w], dim=2)

    def layer_logits(self, snapshots: list[torch.Tensor], first_layer: int = 0) -> torch.Tensor:
        """Concept logits of consecutive snapshots, each read by its own layer's head: -> (n, B, K).

        Args:
            snapshots: n tensors (B, K, D), the snapshots of encoder layers ``first_layer ...
                first_layer + n - 1`` (all ``depth`` of them by default).
        """
        layers = slice(first_layer, first_layer + len(snapshots))
        if layers.stop > self.cfg.depth:
            raise ValueError(f"snapshots of layers {first_layer}..{layers.stop - 1} but the encoder has "
                             f"{self.cfg.depth} layers")
        z = torch.stack(snapshots)  # (n, B, K, D)
        if self.cfg.concept_head == "states":
            e = F.normalize(self.state_embed[layers], dim=-1)  # (n, K, 2, D)
            cos = torch.einsum("lbkd,lksd->lbks", F.normalize(z, dim=-1), e)
            score = cos[..., 1] - cos[..., 0]
        else:
            score = torch.einsum("lbkd,lkd->lbk", z, self.state_embed[layers, :, 0])
        return self.concept_log_scale.exp() * score + self.concept_bias[layers, None]

    def concept_loss(self, layer_logits: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """Frequency-weighted logistic loss; final snapshot + ``aux_concept_weight`` x mean of the others.

        Args:
            layer_logits: (depth, B, K); concepts: float (B, K) in {0, 1}.
        """
        per_layer = torch.stack([weighted_concept_bce(logits, concepts, self.pos_weight, self.neg_weight)
                                 for logits in layer_logits])
        loss = per_layer[-1]
        if self.cfg.aux_concept_weight > 0 and len(per_layer) > 1:
            loss = loss + self.cfg.aux_concept_weight * per_layer[:-1].mean()
        return loss

    def check_concepts(self, concepts: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Validate a (B, K) concept target and return it as float.

        Values are checked on CPU only: on a GPU the check would stall every step, so the
        trainer checks the first batch instead (``mcm_core.batches.check_batch``).
        """
        expected = (batch_size, self.cfg.num_concepts)
        if tuple(concepts.shape) != expected:
            raise ValueError(f"concepts must have shape {expected} (one 0/1 value per concept), got "
                             f"{tuple(concepts.shape)}; this model was built with num_concepts={self.cfg.num_concepts}")
        if concepts.device.type == "cpu":
            check_binary_concepts(concepts)
        return concepts.float()

    def edit_states(self, edits: EditsLike, batch_size: int, device: torch.device) -> torch.Tensor:
        """Normalize edits to a long (B, K) tensor on ``device``: -1 = leave the concept alone, 0/1 = write
        that state (:func:`concept_states`)."""
        return concept_states(edits, self.cfg.num_concepts, batch_size, device)

    def apply_edits(self, snapshots: list[torch.Tensor], states: torch.Tensor) -> list[torch.Tensor]:
        """Write state vectors into the edited tokens of every snapshot, keeping each token's norm.

        Args:
            snapshots: per layer (B, K, D); states: long (B, K) with -1 = unchanged.
        """
        vectors = self.state_vectors()  # (depth, K, 2, D)
        keep = states < 0
        index = states.clamp(min=0)[..., None, None].expand(-1, -1, 1, vectors.shape[-1])  # (B, K, 1, D)
        edited = []
        for layer, z in enumerate(snapshots):
            target = torch.gather(vectors[layer].expand(z.shape[0], -1, -1, -1), 2, index)[:, :, 0]  # (B, K, D)
            target = F.normalize(target, dim=-1) * z.norm(dim=-1, keepdim=True)
            edited.append(torch.where(keep[..., None], z, target))
        return edited

    @torch.no_grad()
    def edit(self, images: torch.Tensor, edits: EditsLike, mask_ratio: float | None = None,
             generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct ``images`` (B, 3, H, W) with some concepts forced to a state.

        Args:
            edits: ``{concept_index: 0 or 1}`` for every image, K states for every image, or a long (B, K)
                tensor (-1 = unchanged); see :func:`concept_states`.
            mask_ratio: test-time mask ratio: low keeps the input, high lets the concepts dominate.
        Returns:
            (B, 3, H, W): visible patches from the input, hidden patches generated.
        """
        encoded = self.forward_encoder(images, mask_ratio, generator, mask)
        encoded.concepts = self.apply_edits(encoded.concepts, self.edit_states(edits, images.shape[0], images.device))
        return self.composite(images, self.forward_decoder(encoded), encoded.mask)

    def predict_concepts(self, images: torch.Tensor, mask_ratio: float = 0.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Concept logits (B, K) from the final snapshot (full images by default)."""
        final = self.forward_encoder(images, mask_ratio, generator).concepts[-1]
        return self.layer_logits([final], first_layer=self.cfg.depth - 1)[0]  # the last layer's own head

    def disentangle_loss(self, images: torch.Tensor, encoded: EncoderOutput, concepts: torch.Tensor,
                         generator: torch.Generator | None) -> torch.Tensor:
        """Flip one random concept per image, decode, re-encode the full image, ask the flip to hold."""
        b, k = concepts.shape
        pick = torch.randint(k, (b,), generator=generator, device=generator.device if generator else "cpu")
        pick = pick.to(images.device)
        target = 1 - concepts.gather(1, pick[:, None])  # (B, 1)
        states = torch.full((b, k), -1, dtype=torch.long, device=images.device)
        states.scatter_(1, pick[:, None], target.long())
        flipped = self.apply_edits(encoded.concepts, states)
        pred = self.forward_decoder(replace(encoded, concepts=flipped, attention=None))
        edited = self.unpatchify(torch.where(encoded.mask[..., None], pred, self.patchify(images)))
        # The judge sees a valid image (values in [0, 1]) while gradients pass as if unclamped (straight-through).
        edited = edited + (edited.clamp(0, 1) - edited).detach()
        logits = self.predict_concepts(edited, 0.0).gather(1, pick[:, None])
        return F.binary_cross_entropy_with_logits(logits, target)

    def counterfactual_loss(self, encoded: EncoderOutput, counterfactual: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """MSE on hidden patches (``forward_loss``, so visible ones too with ``visible_loss_weight``) between the
        decoded edit and the counterfactual image.

        Args:
            encoded: this step's encoder output (its mask and visible tokens are reused).
            counterfactual: images (B, 3, H, W) with some concepts changed, and the long states (B, K)
                that name the change (-1 = unchanged), e.g. ``ShapesDataset.counterfactuals``.
        """
        images, states = counterfactual
        expected = (encoded.mask.shape[0], self.cfg.num_concepts)
        if tuple(states.shape) != expected:
            raise ValueError(f"counterfactual states must have shape {expected}, got {tuple(states.shape)}")
        edited = replace(encoded, concepts=self.apply_edits(encoded.concepts, states), attention=None)
        return self.forward_loss(images, self.forward_decoder(edited, raw=True), encoded.mask)

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None,
                concepts: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                counterfactual: tuple[torch.Tensor, torch.Tensor] | None = None) -> ModelOutput:
        """Reconstruction loss, plus the concept (and disentanglement) losses when ``concepts`` (B, K) is given,
        plus the counterfactual edit loss when ``counterfactual`` (images (B, 3, H, W), states (B, K)) is given
        and ``counterfactual_weight`` > 0."""
        encoded = self.forward_encoder(images, mask_ratio, generator, mask)
        out = self.forward_decoder(encoded, raw=True)
        recon, pred = self.forward_loss(images, out, encoded.mask), self.to_pixels(out)
        layer_logits = self.layer_logits(encoded.concepts)
        loss, losses = recon, {"recon": recon.detach()}
        if concepts is not None:
            concepts = self.check_concepts(concepts, images.shape[0])
            concept = self.concept_loss(layer_logits, concepts)
            loss = loss + self.cfg.concept_weight * concept
            losses["concept"] = concept.detach()
            if self.cfg.disentangle_weight > 0:
                dis = self.disentangle_loss(images, encoded, concepts, generator)
                loss = loss + self.cfg.disentangle_weight * dis
                losses["disentangle"] = dis.detach()
        if counterfactual is not None and self.cfg.counterfactual_weight > 0:
            cf = self.counterfactual_loss(encoded, counterfactual)
            loss = loss + self.cfg.counterfactual_weight * cf
            losses["counterfactual"] = cf.detach()
        return ModelOutput(loss=loss, losses=losses, pred=pred, mask=encoded.mask, concept_logits=layer_logits[-1])
