"""Prototype and spread fitting against numpy, the reward terms by hand, and the selector's errors."""

import math
import os
import stat

import numpy as np
import pytest
import torch

from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import (
    DyMoSelector,
    SubsetPrototypes,
    compute_subset_prototypes,
    fit_subset_prototypes,
    intra_class_similarity,
    quality,
)


def make_network(num_modalities=2, embedding="cosine", seed=0):
    torch.manual_seed(seed)
    modalities = [
        {"name": f"view{j}", "encoder": "features", "in_features": 3, "num_tokens": 2, "out_features": 8}
        for j in range(num_modalities)
    ]
    network = MaskedFusionTransformer(modalities, num_classes=2, dim=16, heads=4, projection_dim=4, embedding=embedding)
    return network.double().eval()


def make_batch(network, batch_size=12, seed=3, present=None):
    generator = torch.Generator().manual_seed(seed)
    batch = {name: torch.randn(batch_size, 3, generator=generator, dtype=torch.float64) for name in network.modality_names}
    batch["label"] = torch.arange(batch_size) % 2
    batch["present"] = torch.ones(batch_size, network.num_modalities, dtype=torch.bool) if present is None else present
    return batch


def numpy_prototypes(embeddings, labels, available, kind):
    """Per subset and class: mean, RMS distance; overall = mean over subsets (all fitted here)."""
    num_subsets, _, width = embeddings.shape
    centers = np.zeros((num_subsets, 2, width))
    sigmas = np.zeros((num_subsets, 2))
    for s in range(num_subsets):
        for k in range(2):
            members = embeddings[s][(labels == k) & available[s]]
            centers[s, k] = members.mean(axis=0)
            if kind == "cosine":
                distances = 1.0 - members @ centers[s, k]
            else:
                distances = np.linalg.norm(members - centers[s, k], axis=1)
            sigmas[s, k] = np.sqrt(np.mean(distances**2))
    return centers, sigmas, centers.mean(axis=0)


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_compute_matches_numpy(kind):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(3, 8, 4))
    if kind == "cosine":
        embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    available = np.ones((3, 8), dtype=bool)
    available[1, :2] = False  # two subjects lack a modality of subset 1

    fitted = compute_subset_prototypes(
        torch.from_numpy(embeddings), torch.from_numpy(labels), torch.from_numpy(available), 2, kind
    )
    centers, sigmas, overall = numpy_prototypes(embeddings, labels, available, kind)

    np.testing.assert_allclose(fitted["centers"].numpy(), centers, atol=1e-12)
    np.testing.assert_allclose(fitted["sigmas"].numpy(), sigmas, atol=1e-12)
    np.testing.assert_allclose(fitted["overall"].numpy(), overall, atol=1e-12)
    assert fitted["counts"].tolist() == [[4, 4], [3, 3], [4, 4]]
    assert fitted["fitted"].all()


def test_compute_marks_thin_subset_unfitted():
    embeddings = torch.randn(3, 4, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    available = torch.ones(3, 4, dtype=torch.bool)
    available[2, 1] = False  # subset 2 keeps one subject of class 1

    fitted = compute_subset_prototypes(embeddings, labels, available, 2, "euclidean")

    assert fitted["fitted"].tolist() == [True, True, False]
    torch.testing.assert_close(fitted["overall"], fitted["centers"][:2].mean(dim=0))


def test_compute_rejects_when_nothing_fits():
    with pytest.raises(ValueError, match=r"counts per subset and class are \[\[1, 1\]\]"):
        compute_subset_prototypes(
            torch.zeros(1, 2, 2), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2, "cosine"
        )


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_fit_matches_full_forward_per_subset(kind):
    network = make_network(embedding=kind)
    present = torch.ones(12, 2, dtype=torch.bool)
    present[:2, 1] = False  # subjects 0 and 1 have no view1
    batch = make_batch(network, present=present)
    halves = [{key: value[:6] for key, value in batch.items()}, {key: value[6:] for key, value in batch.items()}]

    prototypes = fit_subset_prototypes(network, halves)

    subsets = [[True, False], [False, True], [True, True]]
    inputs = {name: batch[name] for name in network.modality_names}
    embeddings = np.stack(
        [network(inputs, torch.tensor([mask] * 12))[1].detach().numpy() for mask in subsets]
    )
    available = np.array([[bool(np.all(present[b].numpy() >= np.array(mask))) for b in range(12)] for mask in subsets])
    centers, sigmas, overall = numpy_prototypes(embeddings, batch["label"].numpy(), available, kind)

    np.testing.assert_allclose(prototypes.centers.numpy(), centers, atol=1e-10)
    np.testing.assert_allclose(prototypes.sigmas.numpy(), sigmas, atol=1e-10)
    np.testing.assert_allclose(prototypes.overall.numpy(), overall, atol=1e-10)
    assert prototypes.counts.tolist() == [[6, 6], [5, 5], [5, 5]]
    assert prototypes.subsets.tolist() == subsets
    assert network.training is False


def test_fit_restores_training_mode():
    network = make_network().train()

    fit_subset_prototypes(network, [make_batch(network)])

    assert network.training


def test_fit_without_batches():
    with pytest.raises(ValueError, match="received no batches"):
        fit_subset_prototypes(make_network(), [])


def one_subset_prototypes(centers, sigmas, overall, embedding):
    """Build prototypes by hand for one modality (one subset) and two classes."""
    return SubsetPrototypes(
        centers=torch.tensor([centers], dtype=torch.float64),
        sigmas=torch.tensor([sigmas], dtype=torch.float64),
        overall=torch.tensor(overall, dtype=torch.float64),
        counts=torch.ones(1, 2, dtype=torch.long),
        fitted=torch.tensor([True]),
        subsets=torch.tensor([[True]]),
        embedding=embedding,
        modality_names=["view0"],
        fingerprint="",
    )


def test_quality_by_hand():
    prototypes = one_subset_prototypes([[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], "cosine")
    embedding = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)

    expected = [1 / (1 + math.exp(-10.0)), 1 / (1 + math.exp(-2.0))]

    torch.testing.assert_close(quality(embedding, prototypes, tau=0.1), torch.tensor(expected, dtype=torch.float64))


def test_euclidean_quality_and_ics_by_hand():
    prototypes = one_subset_prototypes([[0.0, 0.0], [3.0, 0.0]], [2.0, 0.5], [[0.0, 0.0], [3.0, 0.0]], "euclidean")
    embedding = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # predicted class 0

    # Similarities -1 and -4, divided by tau = 0.5: softmax over (-2, -8).
    expected_quality = 1 / (1 + math.exp(-6.0))
    expected_ics = math.erfc(1.0 / (2.0 * math.sqrt(2.0)))

    assert quality(embedding, prototypes, tau=0.5).item() == pytest.approx(expected_quality)
    assert intra_class_similarity(embedding, logits, torch.tensor([0]), prototypes).item() == pytest.approx(expected_ics)


def test_ics_with_zero_spread():
    prototypes = one_subset_prototypes([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], "cosine")
    embedding = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)

    ics = intra_class_similarity(embedding, logits, torch.tensor([0, 0]), prototypes)

    assert ics.tolist() == [1.0, 0.0]


def test_save_load_round_trip(tmp_path):
    network = make_network()
    prototypes = fit_subset_prototypes(network, [make_batch(network)])
    path = tmp_path / "prototypes" / "cosine.pt"

    prototypes.save(path)
    loaded = SubsetPrototypes.load(path, network)

    assert torch.equal(loaded.centers, prototypes.centers)
    assert torch.equal(loaded.sigmas, prototypes.sigmas)
    assert loaded.fingerprint == prototypes.fingerprint
    assert loaded.modality_names == ["view0", "view1"]
    assert [p.name for p in path.parent.iterdir()] == ["cosine.pt"]


def test_load_rejects_other_network(tmp_path):
    network = make_network()
    path = tmp_path / "prototypes.pt"
    fit_subset_prototypes(network, [make_batch(network)]).save(path)

    with pytest.raises(ValueError, match=r"prototypes\.pt: the prototypes were fitted for network fingerprint"):
        SubsetPrototypes.load(path, make_network(seed=1))


def test_selector_rejects_other_network():
    prototypes = fit_subset_prototypes(make_network(), [make_batch(make_network())])

    with pytest.raises(ValueError, match="refit them with fit_subset_prototypes"):
        DyMoSelector(make_network(seed=1), prototypes)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        SubsetPrototypes.load(tmp_path / "absent.pt")


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a torch file")

    with pytest.raises(ValueError, match=r"corrupt.pt is not a readable prototypes file \(\w+"):
        SubsetPrototypes.load(path)


def test_load_foreign_torch_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)

    with pytest.raises(ValueError, match="weights.pt is not a prototypes file"):
        SubsetPrototypes.load(path)


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "pipeline.subset_prototypes", "payload": np.dtype("float64").type}, path)

    with pytest.raises(ValueError, match="pickled.pt is not a readable prototypes file"):
        SubsetPrototypes.load(path)


def fitted_selector(num_modalities=3, **kwargs):
    network = make_network(num_modalities)
    prototypes = fit_subset_prototypes(network, [make_batch(network, batch_size=16)])
    return network, DyMoSelector(network, prototypes, **kwargs)


def test_selector_rejects_unfitted_subset():
    network = make_network(3)
    present = torch.ones(16, 3, dtype=torch.bool)
    present[:, 2] = torch.arange(16) >= 15  # subsets with view2 have a single subject of class 1 or none
    prototypes = fit_subset_prototypes(network, [make_batch(network, batch_size=16, present=present)])
    selector = DyMoSelector(network, prototypes)
    inputs = make_batch(network, batch_size=2)

    with pytest.raises(ValueError, match=r"subset \{view0, view2\} \(needed for sample 1 of the batch\) has no fitted prototype"):
        selector(
            inputs,
            torch.tensor([[True, True, False], [True, False, False]]),
            torch.tensor([[False, False, False], [False, False, True]]),
        )


@pytest.mark.parametrize(
    "present, candidates, error, message",
    [
        (torch.ones(2, 2, dtype=torch.bool), None, ValueError, r"present_mask must have shape .*\(2, 3\) .*got \(2, 2\)"),
        (torch.ones(2, 3, dtype=torch.int64), None, TypeError, "present_mask must be a bool tensor"),
        (torch.tensor([[True, False, False], [False, False, False]]), None, ValueError, r"samples \[1\] of the batch have no present modality"),
        (
            torch.tensor([[True, False, False]] * 2),
            torch.tensor([[True, True, False]] * 2),
            ValueError,
            "modality 'view0' of sample 0 is both present and a candidate",
        ),
        (torch.tensor([[True, False, False]] * 2), torch.ones(2, 4, dtype=torch.bool), ValueError, "candidate_mask must have shape"),
    ],
)
def test_selector_rejects_bad_masks(present, candidates, error, message):
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=2)

    with pytest.raises(error, match=message):
        selector(inputs, present, candidates)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"calibration": "linear"}, "calibration must be one of .* got 'linear'"),
        ({"zero_reward": "skip"}, "zero_reward must be one of .* got 'skip'"),
        ({"tau": 0.0}, "tau must be positive, got 0.0"),
    ],
)
def test_selector_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fitted_selector(**kwargs)


def test_selector_rejects_embedding_kind_mismatch():
    network = make_network(2, embedding="euclidean")
    prototypes = fit_subset_prototypes(make_network(2, embedding="cosine"), [make_batch(network)])

    with pytest.raises(ValueError, match="prototypes use 'cosine' embeddings, but the network produces 'euclidean'"):
        DyMoSelector(network, prototypes, check_fingerprint=False)


def test_selection_report_records():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=4)
    present = torch.tensor([[True, False, False], [False, True, True], [True, True, True], [False, False, True]])

    result = selector(inputs, present)
    records = result.to_records(network.modality_names, subject_ids=["s1", "s2", "s3", "s4"])

    assert [record["subject_id"] for record in records] == ["s1", "s2", "s3", "s4"]
    assert records[0]["present"] == "view0"
    assert records[0]["candidates"] == "view1+view2"
    assert "step1_reward_view1" in records[0]
    assert records[2]["steps"] == 0
    assert records[2]["final"] == "view0+view1+view2"
    for record, final in zip(records, result.present_mask):
        assert record["final"] == "+".join(n for n, used in zip(network.modality_names, final.tolist()) if used)


def test_selector_rejects_negative_tolerance():
    with pytest.raises(ValueError, match="reward_tolerance must be non-negative, got -1.0"):
        fitted_selector(reward_tolerance=-1.0)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")

    with pytest.raises(ValueError, match="empty.pt is not a readable prototypes file: the file is empty"):
        SubsetPrototypes.load(path)


def test_load_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory, expected a prototypes file"):
        SubsetPrototypes.load(tmp_path)


def test_saved_file_readable_by_group_and_others(tmp_path):
    network = make_network()
    path = tmp_path / "prototypes.pt"
    umask = os.umask(0o022)
    os.umask(umask)

    fit_subset_prototypes(network, [make_batch(network)]).save(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_fit_checks_labels():
    network = make_network()
    batch = make_batch(network)
    batch["label"] = batch["label"] + 5

    with pytest.raises(ValueError, match=r"batch\['label'\] must contain class indices in \[0, 2\)"):
        fit_subset_prototypes(network, [batch])


def test_fit_checks_missing_label():
    network = make_network()
    batch = make_batch(network)
    del batch["label"]

    with pytest.raises(ValueError, match=r"batch is missing the keys \['label'\]"):
        fit_subset_prototypes(network, [batch])


def test_fit_ignores_nan_placeholder_of_absent_modality():
    network = make_network()
    present = torch.ones(12, 2, dtype=torch.bool)
    present[:3, 1] = False
    batch = make_batch(network, present=present)
    batch["view1"][:3] = float("nan")

    prototypes = fit_subset_prototypes(network, [batch])

    assert torch.isfinite(prototypes.centers).all()
    assert torch.isfinite(prototypes.sigmas).all()


def test_selector_rejects_prototypes_path():
    network = make_network()

    with pytest.raises(TypeError, match="prototypes must be SubsetPrototypes, got str"):
        DyMoSelector(network, "prototypes.pt")


def test_selector_rejects_float_mask_before_inverting():
    network, selector = fitted_selector()

    with pytest.raises(TypeError, match="present_mask must be a bool tensor, got torch.float32"):
        selector(make_batch(network, batch_size=2), torch.ones(2, 3))


def test_selector_rejects_nan_in_present_modality():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=2)
    inputs["view0"][1] = float("nan")

    with pytest.raises(ValueError, match="observed input of modality 'view0' gives non-finite tokens for sample 1"):
        selector(inputs, torch.tensor([[True, False, False], [True, True, False]]))


def test_selector_ignores_nan_in_unused_modality():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=2)
    inputs["view2"][:] = float("nan")
    present = torch.tensor([[True, False, False], [True, True, False]])
    candidates = torch.tensor([[False, True, False], [False, False, False]])

    result = selector(inputs, present, candidates)

    assert torch.isfinite(result.logits).all()


def test_default_candidates_with_partly_observed_modality():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=3)
    observed = inputs["view1"].clone()
    observed[0] += 1.0  # subject 0: the recovered view1 differs from what was observed
    present = torch.tensor([[True, True, False], [True, True, False], [True, False, False]])

    result = selector(inputs, present, observed_inputs={"view1": observed})

    assert result.candidate_mask.tolist() == [[False, True, True], [False, False, True], [False, True, True]]
    assert torch.equal(result.start_mask, present)


@pytest.mark.parametrize("count", [0, -5, 1.5, True])
def test_fit_rejects_bad_minimum_count(count):
    network = make_network()

    with pytest.raises(ValueError, match="min_samples_per_class must be an int of at least 1"):
        fit_subset_prototypes(network, [make_batch(network)], min_samples_per_class=count)


def test_fit_rejects_single_batch_and_non_network():
    network = make_network()

    with pytest.raises(TypeError, match="batches is a single batch"):
        fit_subset_prototypes(network, make_batch(network))
    with pytest.raises(TypeError, match="network must be a MaskedFusionTransformer, got NoneType"):
        fit_subset_prototypes(None, [make_batch(network)])


def test_save_to_directory_rejected(tmp_path):
    network = make_network()
    prototypes = fit_subset_prototypes(network, [make_batch(network)])

    with pytest.raises(ValueError, match="is a directory; pass the path of the prototypes file"):
        prototypes.save(tmp_path)


def test_observed_inputs_unknown_modality():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=2)

    with pytest.raises(KeyError, match=r"observed_inputs names unknown modalities \['tabel'\]"):
        selector(inputs, torch.ones(2, 3, dtype=torch.bool), observed_inputs={"tabel": inputs["view1"]})


def test_observed_inputs_skip_absent_rows():
    network, selector = fitted_selector()
    inputs = make_batch(network, batch_size=2)
    observed = inputs["view1"].clone()
    observed[0] = float("nan")  # subject 0 lacks view1, so its observed placeholder is never encoded
    observed[1] += 1.0
    present = torch.tensor([[True, False, False], [True, True, False]])

    result = selector(inputs, present, observed_inputs={"view1": observed})

    assert torch.isfinite(result.logits).all()
    assert result.candidate_mask.tolist() == [[False, True, True], [False, True, True]]
