"""Evaluation metrics, probes, edit success and FLOP counting (tiny models, CPU, fast)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mcm_core.evaluate import (
    ConceptReport, RunCost, class_accuracy, concept_metrics, count_flops, edit_success_rate, extract_features,
    knn_accuracy, linear_probe, predict_concepts, prior_thresholds, reconstruction_metrics,
    training_flops_per_image,
)
from mcm_core.masking import num_hidden
from mcm_core.models import build_model

N, K = 6, 13



def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, "tiny", **overrides)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(N, 3, 32, 32, generator=seeded(0)) * 0.5 + 0.25  # in [0.25, 0.75]


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.randint(0, 2, (N, K), generator=seeded(1)).float()


@pytest.fixture(scope="module")
def mcm():
    return make("mcm")


# ---------------------------------------------------------------- concept metrics
LOGITS = torch.tensor([[2.0, 1.0], [-1.0, 1.0], [0.5, 1.0], [-3.0, -1.0]])
TARGETS = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 1]])


def test_concept_metrics_match_hand_computed_values():
    report = concept_metrics(LOGITS, TARGETS, names=["smile", "hat"])
    first, second = report.per_concept
    # concept 0: predictions 1, 0, 1, 0 against 1, 1, 0, 0 -> one of each outcome
    assert (first["tp"], first["fp"], first["fn"], first["tn"]) == (1, 1, 1, 1)
    for metric in ("accuracy", "precision", "recall", "f1"):
        assert first[metric] == pytest.approx(0.5)
    assert first["auc"] == pytest.approx(0.75)  # 3 of the 4 positive/negative pairs ordered right
    # concept 1: predictions 1, 1, 1, 0, every target positive -> AUC undefined
    assert (second["tp"], second["fp"], second["fn"], second["tn"]) == (3, 0, 1, 0)
    assert second["accuracy"] == pytest.approx(0.75) and second["precision"] == pytest.approx(1.0)
    assert second["recall"] == pytest.approx(0.75) and second["f1"] == pytest.approx(6 / 7)
    assert math.isnan(second["auc"])
    assert report.macro["accuracy"] == pytest.approx(0.625)
    assert report.macro["f1"] == pytest.approx((0.5 + 6 / 7) / 2)
    assert report.macro["auc"] == pytest.approx(0.75)  # the nan AUC is left out
    assert report.confusion.tolist() == [[1, 1, 1, 1], [3, 0, 1, 0]]
    assert report.names == ["smile", "hat"] and report.column("support") == [2, 4]


def test_concept_metrics_threshold_and_default_names():
    report = concept_metrics(LOGITS, TARGETS, threshold=1.5)
    assert [row["name"] for row in report.per_concept] == ["concept_0", "concept_1"]
    assert report.per_concept[0]["tp"] == 1 and report.per_concept[0]["fp"] == 0
    assert report.per_concept[1]["tp"] == 0 and report.per_concept[1]["f1"] == 0.0  # no positives predicted


def test_class_accuracy_only_on_one_hot_targets():
    targets = torch.eye(3)[[0, 1, 2, 2]]
    logits = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [3.0, 0, 1.0], [0, 0, 5.0]])
    assert class_accuracy(logits, targets) == 0.75
    assert class_accuracy(LOGITS, TARGETS) is None  # several positives per row: not classes
    assert class_accuracy(torch.zeros(0, 3), torch.zeros(0, 3)) is None


def test_per_concept_thresholds():
    report = concept_metrics(LOGITS, TARGETS, threshold=torch.tensor([1.5, -2.0]))
    assert report.threshold == [1.5, -2.0] and json.loads(json.dumps(report.to_dict()))["threshold"] == [1.5, -2.0]
    assert report.per_concept[0]["tp"] == 1 and report.per_concept[1]["tp"] == 4  # each column its own cut
    with pytest.raises(ValueError, match="one per concept"):
        concept_metrics(LOGITS, TARGETS, threshold=[0.0, 0.0, 0.0])


def test_prior_thresholds_undo_the_frequency_weighting_of_the_concept_loss():
    """A logistic model fitted with the weighted loss is shifted by log((1 - f) / f): the prior threshold undoes it."""
    from mcm_core.models.losses import concept_prior, register_concept_weights, weighted_concept_bce

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, generator=gen)
    true_logit = 2.0 * x - 2.5  # a rare concept
    y = (torch.rand(20000, 1, generator=gen) < torch.sigmoid(true_logit)).float()
    f = float(y.mean())
    weights = torch.nn.Module()
    register_concept_weights(weights, concept_prior([f], 1))
    w, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = weighted_concept_bce(x * w + b, y, weights.pos_weight, weights.neg_weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    shift = prior_thresholds([f])
    assert float(shift) == pytest.approx(math.log((1 - f) / f))
    w, b = w.detach(), b.detach()
    assert float(b) - (-2.5) == pytest.approx(float(shift), abs=0.1) and float(w) == pytest.approx(2.0, abs=0.1)
    logits = x * w + b
    balanced, prior = concept_metrics(logits, y), concept_metrics(logits, y, threshold=shift)
    assert prior.macro["accuracy"] > balanced.macro["accuracy"] and prior.macro["precision"] > balanced.macro["precision"]
    assert prior.macro["auc"] == balanced.macro["auc"]


def test_prior_thresholds_of_a_model_and_bad_frequencies():
    names = ["a", "b", "c"]
    model = build_model("mcm", "tiny", num_concepts=3, concept_names=names, concept_freq=[0.5, 0.1, 0.995])
    torch.testing.assert_close(prior_thresholds(model), torch.log(torch.tensor([1.0, 9.0, 0.01 / 0.99])))
    assert torch.equal(prior_thresholds(build_model("mcm", "tiny", num_concepts=3, concept_names=names)), torch.zeros(3))
    with pytest.raises(ValueError, match=r"lie in \(0, 1\)"):
        prior_thresholds([0.2, 1.0])


def test_perfect_predictions_score_one(labels):
    report = concept_metrics(labels * 4 - 2, labels)
    for metric in ("accuracy", "precision", "recall", "f1", "auc"):
        assert report.macro[metric] == pytest.approx(1.0), metric


def test_report_serializes_and_prints():
    report = concept_metrics(LOGITS, TARGETS, names=["smile", "hat"])
    assert isinstance(report, ConceptReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["names"] == ["smile", "hat"] and len(data["per_concept"]) == 2
    text = str(report)
    assert "smile" in text and "macro" in text and "nan" in text and "0.750" in text


def test_concept_metrics_errors_name_the_problem():
    with pytest.raises(ValueError, match="one name per column"):
        concept_metrics(LOGITS, TARGETS, names=["only one"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        concept_metrics(LOGITS, TARGETS * 2)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        concept_metrics(LOGITS, TARGETS[:, :1])


# ---------------------------------------------------------------- predictions and features
def test_predict_concepts_over_a_dataset_restores_train_mode(mcm, images, labels):
    mcm.train()
    logits, targets = predict_concepts(mcm, TensorDataset(images, labels), batch_size=4)
    assert mcm.training
    assert logits.shape == (N, K) and torch.equal(targets, labels)
    mcm.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, mcm.predict_concepts(images, 0.0))
    from_pair, _ = predict_concepts(mcm, (images, labels), batch_size=5)
    torch.testing.assert_close(from_pair, logits)


def test_predict_concepts_needs_an_mcm(images, labels):
    with pytest.raises(TypeError, match="MCM"):
        predict_concepts(make("mae"), (images, labels))


def test_extract_features_from_a_loader(mcm, images):
    classes = torch.arange(N) % 3
    loader = DataLoader(TensorDataset(images, classes), batch_size=4)
    features, targets = extract_features(mcm, loader, pool="mean")
    assert features.shape == (N, mcm.cfg.embed_dim) and torch.equal(targets, classes)
    cls, _ = extract_features(mcm, (images, classes), pool="cls")
    with torch.no_grad():
        torch.testing.assert_close(cls, mcm.eval().features(images, "cls"))
    with pytest.raises(ValueError, match="unknown pool"):
        extract_features(mcm, loader, pool="max")


# ---------------------------------------------------------------- kNN and linear probes
def clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian clusters in 16-D: (3n, 16), (3n,)."""
    centers = torch.eye(16)[:3] * 10
    y = torch.arange(3).repeat_interleave(n_per_class)
    return centers[y] + torch.randn(len(y), 16, generator=seeded(seed)), y


def test_knn_accuracy_on_separable_clusters():
    (train_x, train_y), (test_x, test_y) = clusters(30, 0), clusters(10, 1)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) == pytest.approx(1.0)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=500, chunk_size=7) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="linear_probe"):
        knn_accuracy(train_x, torch.zeros(90, 2), test_x, test_y)


def test_linear_probe_on_separable_classes():
    (train_x, train_y), (test_x, test_y) = clusters(30, 0), clusters(10, 1)
    assert linear_probe(train_x, train_y, test_x, test_y)["accuracy"] == pytest.approx(1.0)


def multilabel(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, 8) whose first 4 dims encode 4 binary concepts with a wide margin."""
    g = seeded(seed)
    y = torch.randint(0, 2, (n, 4), generator=g).float()
    x = torch.cat([3 * (2 * y - 1), torch.zeros(n, 4)], dim=1) + 0.3 * torch.randn(n, 8, generator=g)
    return x, y


def test_linear_probe_on_separable_concepts():
    (train_x, train_y), (test_x, test_y) = multilabel(120, 0), multilabel(40, 1)
    result = linear_probe(train_x, train_y, test_x, test_y, C=0.5)
    assert result["accuracy"] == pytest.approx(1.0) and result["macro_f1"] == pytest.approx(1.0)
    assert len(result["per_concept_f1"]) == 4


def test_linear_probe_handles_a_constant_concept():
    (train_x, train_y), (test_x, test_y) = multilabel(60, 0), multilabel(20, 1)
    train_y[:, 0], test_y[:, 0] = 1.0, 1.0
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result["per_concept_f1"][0] == pytest.approx(1.0)


# ---------------------------------------------------------------- reconstruction
def oracle(model, hidden_offset: float = 0.0, visible_offset: float = 0.0):
    """Patch ``model`` to predict the true patches (+ offsets on hidden / visible patches)."""
    seen = {}
    encode = model.forward_encoder

    def forward_encoder(images, *args, **kwargs):
        seen["images"] = images
        return encode(images, *args, **kwargs)

    def forward_decoder(encoded):
        offset = torch.where(encoded.mask, hidden_offset, visible_offset)[..., None]
        return model.patchify(seen["images"]) + offset

    model.forward_encoder, model.forward_decoder = forward_encoder, forward_decoder
    return model


def test_reconstruction_of_a_perfect_model_is_exact(images):
    result = reconstruction_metrics(oracle(make("mae")), images, 0.75, generator=seeded(), batch_size=4)
    assert result["mse"] == 0.0 and result["psnr"] == math.inf


def test_reconstruction_scores_hidden_patches_only(images):
    model = oracle(make("mcm"), hidden_offset=0.1, visible_offset=0.2)
    result = reconstruction_metrics(model, images, 0.5, generator=seeded(), batch_size=4)
    assert result["mse"] == pytest.approx(0.01, rel=1e-4)
    assert result["psnr"] == pytest.approx(20.0, rel=1e-4)
    everything = reconstruction_metrics(model, images, 0.0)  # nothing hidden: all patches scored
    assert everything["mse"] == pytest.approx(0.04, rel=1e-4)


def test_reconstruction_rejects_normalized_pixel_models(images):
    with pytest.raises(ValueError, match="norm_pix_loss"):
        reconstruction_metrics(make("mae", norm_pix_loss=True), images, 0.75)


# ---------------------------------------------------------------- edit success
def test_edit_success_rate_of_an_untrained_mcm(mcm, images, labels):
    result = edit_success_rate(mcm, images, labels, mask_ratio=0.75, generator=seeded(), batch_size=4)
    assert 0.0 <= result["rate"] <= 1.0 and len(result["per_concept"]) == K
    assert result["rate"] == pytest.approx(sum(result["per_concept"]) / K)
    some = edit_success_rate(mcm, images, labels, generator=seeded(), concept_indices=[0, 3])
    assert len(some["per_concept"]) == 2 and some["concept_indices"] == [0, 3]


def fake_editor(model, follow_edit: bool):
    """Patch ``model`` so that re-encoding reports the edited state (or the original labels)."""
    calls = {"masks": [], "states": None}

    def edit(images, states, mask_ratio=None, generator=None, mask=None):
        calls["masks"].append(mask.clone())
        calls["states"] = states
        return images

    def predict(images, mask_ratio=0.0, generator=None):
        states = calls["states"]
        return (states if follow_edit else 1 - states).float() * 2 - 1

    model.edit, model.predict_concepts = edit, predict
    return calls


def test_edit_success_rate_is_one_when_edits_always_work(images, labels):
    model = make("mcm")
    calls = fake_editor(model, follow_edit=True)
    result = edit_success_rate(model, images, labels, mask_ratio=0.5, generator=seeded(), batch_size=4)
    assert result["rate"] == 1.0 and result["per_concept"] == [1.0] * K
    first_batch = calls["masks"][:K]  # one shared mask per image for all its edits
    assert all(torch.equal(m, first_batch[0]) for m in first_batch)
    assert (first_batch[0].sum(1) == num_hidden(64, 0.5)).all()
    fake_editor(model, follow_edit=False)
    assert edit_success_rate(model, images, labels, concept_indices=[1])["rate"] == 0.0


def test_edit_success_rate_checks_its_inputs(mcm, images, labels):
    with pytest.raises(ValueError, match="shape"):
        edit_success_rate(mcm, images, labels[:, :5])
    with pytest.raises(ValueError, match="concept_indices"):
        edit_success_rate(mcm, images, labels, concept_indices=[K])
    with pytest.raises(TypeError, match="MCM"):
        edit_success_rate(make("mae"), images, labels)


# ---------------------------------------------------------------- cost
def test_count_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_training_flops_fall_with_mask_ratio(mcm, images, labels):
    flops = [training_flops_per_image(mcm, images[:2], r, concepts=labels[:2], generator=seeded())
             for r in (0.0, 0.5, 0.75)]
    assert flops[0] > flops[1] > flops[2] > 0
    assert all(p.grad is None for p in mcm.parameters())


def test_run_cost_rates():
    cost = RunCost(wall_seconds=2.0, train_flops=4e12, images_seen=100)
    assert cost.tflops_per_second == pytest.approx(2.0) and cost.flops_per_image == pytest.approx(4e10)
    assert json.loads(json.dumps(cost.to_dict()))["images_seen"] == 100
    assert math.isnan(RunCost(0.0, 1.0, 0).tflops_per_second)
