"""What a model can do is read from its class attributes; every list of valid names has one source;
each small shared piece (features, schedules, EMA, edit states, mask messages) behaves the same everywhere."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcm_core import choices, cli, config, data
from mcm_core.analysis import interpolation as mi
from mcm_core.config import TrainConfig
from mcm_core.evaluate import edit_success_rate, extract_features, predict_concepts, reconstruction_metrics
from mcm_core.evaluate.reconstruction import check_editable
from mcm_core.masking import MASKERS, num_hidden
from mcm_core.models import (
    CAPABILITIES, ImageModel, ModelOutput, build_model, has, make_config, model_class, model_names, register_model,
    unregister_model,
)
from mcm_core.models.backbone import BackboneConfig, ViTEncoder
from mcm_core.models.latent_mim import ema_momentum
from mcm_core.models.layers import cosine_schedule, ema_update
from mcm_core.models.mcm import MultiLayerConceptMap
from mcm_core.optim import lr_lambda
from mcm_core.train import Trainer

SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16, "decoder_num_heads": 2}
EXPECTED = {  # name -> (uses_concepts, reconstructs_pixels, can_edit)
    "mae": (False, True, False), "mcm": (True, True, True), "micl": (False, False, False),
    "latent_mim": (False, False, False), "supervised": (True, False, False),
}


# --------------------------------------------------------------------------- a model from outside the package
@dataclass
class ProbeConfig(BackboneConfig):
    num_concepts: int = 1
    concept_names: list[str] | None = None
    concept_freq: list[float] | None = None
    mask_ratio: float = 0.0


class ConceptProbe(ImageModel):
    """A linear concept head on the encoder's CLS feature; records what the trainer hands it."""

    config_class = ProbeConfig
    uses_concepts = True

    def __init__(self, cfg: ProbeConfig) -> None:
        super().__init__()
        self.cfg, self.encoder = cfg, ViTEncoder(cfg)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_concepts)
        self.seen: list[torch.Tensor | None] = []
        self.progress: list[float] = []

    def predict_concepts(self, images: torch.Tensor, mask_ratio: float = 0.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(self.features(images))  # (B, K)

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None, concepts: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> ModelOutput:
        self.seen.append(concepts)
        logits = self.predict_concepts(images)
        loss = logits.pow(2).mean() if concepts is None else F.binary_cross_entropy_with_logits(logits, concepts)
        return ModelOutput(loss=loss)

    def after_step(self, progress: float) -> None:
        self.progress.append(progress)


class FeatureProbe(ConceptProbe):
    """The same model, declared as one that does not use concepts."""

    uses_concepts = False


@pytest.fixture
def registered():
    """``registered(name, cls)`` registers a model for one test and removes it afterwards."""
    added = []

    def add(name: str, cls: type) -> None:
        register_model(name)(cls)
        added.append(name)

    yield add
    for name in added:
        unregister_model(name)


def probe_trainer(tmp_path, method: str) -> Trainer:
    cfg = TrainConfig(method=method, model={k: SMALL[k] for k in ("embed_dim", "num_heads")} | {"depth": 1},
                      data={"size": 16}, steps=2, batch_size=4, mask_ratio=0.0, warmup_steps=0,
                      out_dir=str(tmp_path / method), progress=False, eval_size=8)
    return Trainer(cfg)


# --------------------------------------------------------------------------- capabilities
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_registered_model_declares_its_capabilities(name):
    cls = model_class(name)
    assert all(isinstance(getattr(cls, c), bool) for c in CAPABILITIES)
    assert tuple(has(cls, c) for c in CAPABILITIES) == EXPECTED[name]
    assert tuple(has(name, c) for c in CAPABILITIES) == EXPECTED[name]  # by registered name, before a model exists


def test_registering_a_class_without_the_protocol_is_refused():
    class Bare(nn.Module):
        pass

    class EditsWithoutPixels(ImageModel):
        uses_concepts = can_edit = True

    with pytest.raises(TypeError, match=r"must declare uses_concepts, reconstructs_pixels, can_edit, features\(\) "
                                        r"and after_step\(\)"):
        register_model("bare")(Bare)
    with pytest.raises(TypeError, match="can_edit = True, which needs reconstructs_pixels = True"):
        register_model("edits_without_pixels")(EditsWithoutPixels)
    assert "bare" not in model_names() and "edits_without_pixels" not in model_names()
    with pytest.raises(ValueError, match="unknown capability 'edits'"):
        has(MultiLayerConceptMap, "edits")


def test_the_trainer_gives_concept_targets_to_a_model_that_uses_them(tmp_path, registered):
    registered("probe_concepts", ConceptProbe)
    registered("probe_features", FeatureProbe)
    trainer = probe_trainer(tmp_path, "probe_concepts")
    model = trainer.unwrapped
    assert trainer.uses_concepts and model.cfg.num_concepts == len(data.CONCEPT_NAMES)  # sized to the data
    assert model.cfg.concept_names == list(data.CONCEPT_NAMES) and model.cfg.concept_freq is not None
    images, targets = next(trainer.batches(1))
    trainer.train_step(images, targets)
    assert torch.equal(model.seen[0], targets) and model.progress == [0.5]  # after_step: step 1 of 2

    plain = probe_trainer(tmp_path, "probe_features")
    images, targets = next(plain.batches(1))
    plain.train_step(images, targets)
    assert not plain.uses_concepts and plain.unwrapped.seen == [None] and plain.unwrapped.cfg.num_concepts == 1


def test_cli_and_evaluate_follow_the_attributes_of_a_new_model(tmp_path, registered):
    registered("probe_concepts", ConceptProbe)
    trainer = probe_trainer(tmp_path, "probe_concepts")
    model = trainer.unwrapped.eval()
    metrics = cli.RunEvaluator(trainer.cfg).full(model)  # what `mcm train` evaluates after training
    assert "concepts" in metrics and "reconstruction" not in metrics and "measures" not in metrics
    assert any("ConceptProbe has no pixel decoder" in note for note in metrics["notes"])
    images = torch.rand(4, 3, 32, 32)
    logits, _ = predict_concepts(model, (images, torch.zeros(4, model.cfg.num_concepts)))
    assert logits.shape == (4, model.cfg.num_concepts)
    assert extract_features(model, (images, torch.zeros(4)))[0].shape == (4, SMALL["embed_dim"])
    with pytest.raises(TypeError, match=r"ConceptProbe has no pixel decoder \(reconstructs_pixels = False\)"):
        reconstruction_metrics(model, images, 0.5)
    with pytest.raises(TypeError, match=r"has no editable concept tokens \(can_edit = False\)"):
        check_editable(model)


def test_a_model_with_the_methods_but_not_the_capability_is_refused():
    """An MCM subclass that declares can_edit = False still has edit(); nothing may use it."""
    class NoEdit(MultiLayerConceptMap):
        can_edit = False

    model = NoEdit(make_config("mcm", "tiny", num_concepts=3, **SMALL))
    images, labels = torch.rand(2, 3, 32, 32), torch.ones(2, 3)
    assert callable(model.edit) and not cli.has_capability(model, "can_edit")
    for call in (lambda: check_editable(model), lambda: edit_success_rate(model, images, labels)):
        with pytest.raises(TypeError, match=r"NoEdit has no editable concept tokens \(can_edit = False\)"):
            call()
    assert cli.has_capability(model, "uses_concepts") and cli.no_reconstruction(model) is None


# --------------------------------------------------------------------------- one source per list of names
def test_each_list_of_valid_names_equals_its_source():
    assert tuple(MASKERS) == choices.MASKINGS
    assert data.DATASET_NAMES == choices.DATASET_NAMES
    assert sorted(choices.MODEL_NAMES) == model_names()
    fields = TrainConfig.__dataclass_fields__
    for field, names in (("method", choices.MODEL_NAMES), ("dataset", choices.DATASET_NAMES),
                         ("masking", choices.MASKINGS)):
        assert all(name in fields[field].metadata["help"] for name in names)


@pytest.mark.parametrize("field, names", [("masking", choices.MASKINGS), ("hierarchy_affinity", choices.AFFINITIES),
                                          ("precision", choices.PRECISIONS)])
def test_config_accepts_exactly_the_listed_names(field, names):
    for name in names:
        assert getattr(TrainConfig(**{field: name}), field) == name
    with pytest.raises(ValueError, match=f"unknown {field} 'nope'; choose {choices.one_of(names)}$"):
        TrainConfig(**{field: "nope"})


def test_every_affinity_and_pool_is_accepted_by_the_model():
    model = build_model("mae", "tiny", **SMALL)
    images = torch.rand(2, 3, 32, 32)
    for kind in choices.AFFINITIES:
        assert model.encoder.patch_affinity(images, kind=kind).shape == (2, 64, 64)
    with pytest.raises(ValueError, match=f"choose one of {', '.join(choices.AFFINITIES)}"):
        model.encoder.patch_affinity(images, kind="pixels")
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        model.features(images, "max")


# --------------------------------------------------------------------------- each small piece once
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_features_are_the_encoders_cls_token_or_mean_patch(name):
    model = build_model(name, "tiny", **SMALL).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encoder.forward_features(images)
        assert torch.equal(model.features(images), tokens[:, 0])
        assert torch.equal(model.features(images, "mean"), tokens[:, 1:].mean(dim=1))


def test_one_mask_ratio_message_everywhere():
    message = r"mask_ratio must be in \[0, 1\), got 1.0; "
    images = torch.rand(2, 3, 32, 32)
    for call in (lambda: TrainConfig(mask_ratio=1.0), lambda: num_hidden(64, 1.0), lambda: mi.check_mask_ratio(1.0),
                 lambda: build_model("mae", "tiny", **SMALL)(images, mask_ratio=1.0)):
        with pytest.raises(ValueError, match=message):
            call()
    assert config.check_mask_ratio is choices.check_mask_ratio is mi.check_mask_ratio


@pytest.mark.parametrize("name", ["mae", "mcm", "micl", "latent_mim"])
def test_one_mask_message_for_every_model_that_takes_a_mask(name):
    model = build_model(name, "tiny", **SMALL)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 64\) \(True = hidden\), got "
                                         r"torch.float32 \(2, 64\); build one with mcm_core.masking"):
        model(torch.rand(2, 3, 32, 32), mask=torch.zeros(2, 64))


def test_edit_states_are_normalized_once():
    model = build_model("mcm", "tiny", num_concepts=4, **SMALL)
    for edits in ({1: 1, 3: 0}, [-1, 1, -1, 0], torch.tensor([[-1, 1, -1, 0]] * 2)):
        assert torch.equal(model.edit_states(edits, 2, torch.device("cpu")), mi.concept_states(edits, 4, 2))
    for bad, message in (({4: 1}, "concept index 4 out of range"), ([2, -1, -1, -1], "must be -1"),
                         ([1, 1], "got 2 concept states but the model has 4")):
        for call in (lambda: model.edit_states(bad, 2, "cpu"), lambda: mi.concept_states(bad, 4, 2)):
            with pytest.raises(ValueError, match=message):
                call()


def test_one_cosine_schedule_and_one_ema_update():
    cfg = TrainConfig(steps=20, warmup_steps=4, lr=1e-3, min_lr=1e-5)
    assert lr_lambda(cfg)(9) == cosine_schedule(5 / 16, 1.0, 1e-5 / 1e-3)
    assert ema_momentum(0.3, 0.99, 1.0) == cosine_schedule(0.3, 0.99, 1.0)
    progress = torch.tensor([0.0, 0.3, 1.0])
    assert torch.allclose(cosine_schedule(progress, 0.99, 1.0).double(),
                          torch.tensor([cosine_schedule(float(p), 0.99, 1.0) for p in progress]).double())
    ema, online = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [0.9 * e + 0.1 * o for e, o in zip(ema.parameters(), online.parameters())]
    ema_update(ema, online, 0.9)
    assert all(torch.allclose(p, q) for p, q in zip(ema.parameters(), expected))
