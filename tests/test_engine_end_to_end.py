"""Train, checkpoint, fit prototypes and select on a small synthetic two-modality problem.

Both modalities carry the class as a mean shift of 0.6 under noise of scale 1.5. At test time
modality ``b`` is missing for everyone. Its recovered value is the true one for odd subjects and,
for even subjects, a draw that points to the wrong class, as a misleading imputer would give.
"""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, SubsetPrototypes, fit_subset_prototypes
from pipeline.training import SubsetTrainer, load_checkpoint, save_checkpoint


def make_cohort(num_subjects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (num_subjects,), generator=generator)
    shift = 0.6 * (2 * labels - 1).float()[:, None]
    a = torch.randn(num_subjects, 6, generator=generator) * 1.5 + shift
    b = torch.randn(num_subjects, 6, generator=generator) * 1.5 + shift
    return a, b, labels


def to_batches(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> list[dict]:
    batches = []
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        present = torch.ones(len(labels[rows]), 2, dtype=torch.bool)
        batches.append({"a": a[rows], "b": b[rows], "present": present, "label": labels[rows]})
    return batches


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # The networks are tiny, so a second thread only adds synchronisation.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "a", "encoder": "features", "in_features": 6, "num_tokens": 2, "out_features": 16},
            {"name": "b", "encoder": "features", "in_features": 6, "num_tokens": 2, "out_features": 16},
        ],
        num_classes=2,
        dim=32,
        heads=4,
        projection_dim=16,
        embedding="euclidean",
    )
    train = to_batches(*make_cohort(1024, seed=1))
    validation = to_batches(*make_cohort(256, seed=2))
    history = SubsetTrainer(network, learning_rate=1e-3, max_epochs=15, patience=5).fit(train, validation)

    folder = tmp_path_factory.mktemp("engine")
    save_checkpoint(folder / "model.pt", network)
    fit_subset_prototypes(network, train).save(folder / "prototypes.pt")
    yield folder, history
    torch.set_num_threads(previous_threads)


def test_training_learns(trained):
    _, history = trained

    assert history.best_metric > 0.85


def test_selection_after_reload(trained):
    folder, _ = trained
    network, _ = load_checkpoint(folder / "model.pt")
    prototypes = SubsetPrototypes.load(folder / "prototypes.pt", network)
    selector = DyMoSelector(network, prototypes, calibration="ratio")

    a, b, labels = make_cohort(400, seed=3)
    misleading = torch.arange(400) % 2 == 0
    wrong_shift = -0.6 * (2 * labels - 1).float()[:, None]
    generator = torch.Generator().manual_seed(4)
    b_recovered = torch.where(misleading[:, None], torch.randn(400, 6, generator=generator) * 1.5 + wrong_shift, b)
    present = torch.tensor([[True, False]]).repeat(400, 1)

    result = selector({"a": a, "b": b_recovered}, present)
    with torch.no_grad():
        fuse_all = network({"a": a, "b": b_recovered}, torch.ones(400, 2, dtype=torch.bool))[0]

    admitted = result.admitted_mask[:, 1].float()
    dymo_auc = roc_auc_score(labels, result.logits.softmax(-1)[:, 1])
    fuse_all_auc = roc_auc_score(labels, fuse_all.softmax(-1)[:, 1])

    assert admitted[~misleading].mean() > admitted[misleading].mean() + 0.1
    assert dymo_auc > fuse_all_auc + 0.02
    assert torch.equal(result.present_mask[:, 0], torch.ones(400, dtype=torch.bool))
