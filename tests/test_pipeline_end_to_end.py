"""From a built cohort to DyMo selections: data layer, imputers and selector on a slice of cad_demo.

The network is untrained, so only the plumbing is checked: recovered tables and generated image
tokens reach the selector, which treats them as candidates and returns finite predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohorts import build_cohort
from pipeline.data.dataset import fit_tabular_encoders, presence_matrix, subject_items
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import (
    LoadModalityImaged,
    MarkAbsentModalityd,
    image_preprocessing,
)
from pipeline.imputation import IterativeTabularImputer, TokenImputer, recover_batch
from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, fit_subset_prototypes

MODALITIES = ["cine", "clinical"]


def load_split(manifest, encoders, split, cache_dir):
    items = subject_items(manifest, encoders, split=split)
    transform = Compose(
        [
            LoadModalityImaged(keys=["cine"], cache_dir=cache_dir, kind="2d+t"),
            MarkAbsentModalityd(keys=["cine"], spatial_shape=(32, 32, 8)),
            image_preprocessing(keys=["cine"], spatial_shape=(32, 32, 8), kind="2d+t"),
        ]
    )
    batch = next(iter(DataLoader(Dataset(items, transform), batch_size=len(items))))
    batch["present"] = presence_matrix(batch, MODALITIES)
    return batch


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cad_demo")
    manifest = read_manifest(build_cohort("cad_demo", folder, seed=0, limit=120), REPOSITORY_CONFIGS / "cad_demo.yaml")
    encoders = fit_tabular_encoders(manifest)
    cache = folder / "cache"
    return manifest, encoders, load_split(manifest, encoders, "train", cache), load_split(manifest, encoders, "test", cache)


def test_imputed_modalities_reach_the_selector(cohort):
    manifest, encoders, train, test = cohort
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "cine", "encoder": "image", "kind": "2d+t", "backbone": "resnet10", "widths": [4, 8, 8, 16], "token_grid": [2, 2, 1]},
            {"name": "clinical", "encoder": "tabular", "categorical_cardinalities": list(encoders["clinical"].cardinalities), "num_continuous": 5, "dim": 8, "heads": 2},
        ],
        num_classes=2,
        dim=16,
        heads=4,
    ).eval()
    prototypes = fit_subset_prototypes(network, [train], min_samples_per_class=1)

    # Hide half of the test subjects' cines and a third of their clinical values, as simulated
    # missingness masks would. (The first rows of the cohort are from Cleveland, where every
    # patient has a cine.)
    test = dict(test, present=test["present"].clone())
    test["present"][::2, 0] = False
    generator = torch.Generator().manual_seed(0)
    observed_table = dict(test["clinical"])
    hidden = torch.rand(observed_table["missing_values"].shape, generator=generator) < 0.33
    observed_table["missing_values"] = observed_table["missing_values"] | hidden

    # Recover the table with the iterative imputer fitted on the training rows.
    train_rows = manifest.frame["split"] == "train"
    train_table = encoders["clinical"].transform(manifest.tabular("clinical")[train_rows.to_numpy()])
    imputer = IterativeTabularImputer(random_state=0).fit(train_table, encoders["clinical"].cardinalities)
    recovered = recover_batch(observed_table, test["present"], imputer, table_index=1)

    # Generate cine tokens for subjects without a cine from their clinical tokens.
    with torch.no_grad():
        train_tokens = network.encode({"cine": train["cine"], "clinical": train["clinical"]}, train["present"])
        tokens = network.encode({"cine": test["cine"], "clinical": recovered.table}, test["present"])
        observed_tokens = tokens.clone()
        observed_tokens[:, network.token_slice("clinical")] = network.encode_modality("clinical", observed_table)
    cine, clinical = network.token_slice("cine"), network.token_slice("clinical")
    token_imputer = TokenImputer(max_epochs=20, random_state=0).fit(
        train_tokens[:, cine].numpy(), train_tokens[:, clinical].numpy(), train["present"][:, 0].numpy()
    )
    generated = torch.from_numpy(token_imputer.transform(tokens[:, clinical].numpy()))
    absent_cine = ~test["present"][:, 0]
    tokens[absent_cine, cine] = generated[absent_cine]
    observed_tokens[:, cine] = tokens[:, cine]

    partly_observed = hidden.any(dim=1) & test["present"][:, 1]
    candidates = absent_cine.clone()[:, None].repeat(1, 2)
    candidates[:, 1] = partly_observed
    result = DyMoSelector(network, prototypes).select_tokens(tokens, test["present"], candidates, observed_tokens)

    assert bool(absent_cine.any())
    assert torch.isfinite(result.logits).all()
    assert torch.equal(result.candidate_mask, candidates)
    assert not bool((result.admitted_mask & ~candidates).any())
    assert bool(result.present_mask.any(dim=1).all())
    assert np.isfinite(recovered.table["continuous"].numpy()).all()
    assert len(result.steps) >= 1
    evaluated = ~result.steps[0].rewards.isnan()
    assert torch.equal(evaluated, candidates)
    assert torch.isfinite(result.steps[0].rewards[evaluated]).all()
