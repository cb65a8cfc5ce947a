"""Which shapes concepts a linear read-out of the pixels can see, and which need one nonlinearity.

For every concept of the built-in shapes data: the test AUC of a logistic regression trained
on (a) the raw pixels, (b) the absolute differences of horizontally neighbouring pixels and
(c) the standard deviation of each 4 x 4 patch's pixels (the tiny preset's patches). A concept
that (a) misses and (b)/(c) catch is a texture: zero-mean, so any linear map of the pixels
(a ViT's patch embedding included) averages it away, and an encoder must first learn an
energy detector. This is the measured cause of ``noisy_background`` staying at chance in
the workbook's concept probes (docs/results.md)::

    python benchmarks/pixel_probes.py --train 3000 --test 1000
"""
from __future__ import annotations

import argparse
from typing import Callable

import numpy as np
import torch

from mcm_core.data import ShapesDataset

FEATURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "raw pixels": lambda x: x.flatten(1),
    "|horizontal pixel difference|": lambda x: (x[..., 1:] - x[..., :-1]).abs().flatten(1),
    "4x4 patch pixel std": lambda x: x.unfold(2, 4, 4).unfold(3, 4, 4).flatten(-2).std(-1).flatten(1),
}


def arrays(ds: ShapesDataset) -> tuple[torch.Tensor, np.ndarray]:
    """All images (N, 3, S, S) and 0/1 concept labels (N, K) of a data set."""
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]).numpy()


def probe_aucs(train: ShapesDataset, test: ShapesDataset) -> dict[str, dict[str, float]]:
    """``{feature: {concept: test AUC}}`` of one logistic regression per concept and feature."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    (x_tr, y_tr), (x_te, y_te) = arrays(train), arrays(test)
    out: dict[str, dict[str, float]] = {}
    for name, feature in FEATURES.items():
        f_tr, f_te = feature(x_tr).numpy(), feature(x_te).numpy()
        out[name] = {}
        for k, concept in enumerate(train.concept_names):
            clf = LogisticRegression(max_iter=2000).fit(f_tr, y_tr[:, k])
            out[name][concept] = float(roc_auc_score(y_te[:, k], clf.predict_proba(f_te)[:, 1]))
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=3000, help="training images (seed 0)")
    p.add_argument("--test", type=int, default=1000, help="test images (seed 1)")
    args = p.parse_args(argv)
    if args.train < 50 or args.test < 50:
        p.error("need --train and --test >= 50 (every concept needs positives and negatives)")
    aucs = probe_aucs(ShapesDataset(size=args.train, seed=0), ShapesDataset(size=args.test, seed=1))
    concepts = list(next(iter(aucs.values())))
    print("| concept | " + " | ".join(aucs) + " |")
    print("|---|" + "---|" * len(aucs))
    for concept in concepts:
        print(f"| {concept} | " + " | ".join(f"{aucs[f][concept]:.3f}" for f in aucs) + " |")
    return aucs


if __name__ == "__main__":
    main()
