import numpy as np
import pytest
import torch

from pipeline.networks import MaskedFusionTransformer, network_fingerprint


def feature_modalities(count: int, in_features: int = 4) -> list[dict]:
    return [
        {"name": f"view{j}", "encoder": "features", "in_features": in_features, "num_tokens": j + 1, "out_features": 8}
        for j in range(count)
    ]


def make_network(count: int = 3, embedding: str = "cosine", seed: int = 0) -> MaskedFusionTransformer:
    torch.manual_seed(seed)
    network = MaskedFusionTransformer(
        feature_modalities(count), num_classes=3, dim=16, heads=4, projection_dim=6, embedding=embedding
    )
    return network.double().eval()


def random_inputs(network: MaskedFusionTransformer, batch_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch_size, 4, generator=generator, dtype=torch.float64) for name in network.modality_names}


def test_stages_compose_to_forward():
    network = make_network()
    inputs = random_inputs(network, 4)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)

    logits, embedding = network(inputs, mask)
    staged_logits, staged_embedding = network.classify(network.fuse(network.encode(inputs, mask), mask))
    unmasked_logits, _ = network.classify(network.fuse(network.encode(inputs), mask))

    assert logits.shape == (4, 3)
    assert embedding.shape == (4, 6)
    assert torch.equal(logits, staged_logits)
    assert torch.equal(embedding, staged_embedding)
    # Encoding all rows differs only in rounding: fusion ignores the extra rows' tokens.
    torch.testing.assert_close(unmasked_logits, logits, rtol=0, atol=1e-12)


def test_token_layout_follows_modality_order():
    network = make_network()

    assert network.token_counts == [1, 2, 3]
    assert network.token_modality.tolist() == [0, 1, 1, 2, 2, 2]
    assert network.token_slice("view1") == slice(1, 3)
    assert network.encode(random_inputs(network, 2)).shape == (2, 6, 16)


@pytest.mark.parametrize("embedding", ["cosine", "euclidean"])
def test_unused_modality_content_is_ignored(embedding):
    network = make_network(embedding=embedding)
    inputs = random_inputs(network, 5)
    changed = dict(inputs, view1=inputs["view1"] * 100.0 + 7.0)
    mask = torch.tensor([[1, 0, 1]] * 5, dtype=torch.bool)

    before = network(inputs, mask)
    after = network(changed, mask)

    assert torch.equal(before[0], after[0])
    assert torch.equal(before[1], after[1])


def test_nan_placeholder_of_unused_modality_is_ignored():
    network = make_network()
    inputs = random_inputs(network, 2)
    placeholder = dict(inputs, view2=torch.full_like(inputs["view2"], float("nan")))
    mask = torch.tensor([[1, 1, 0]] * 2, dtype=torch.bool)

    logits, embedding = network(placeholder, mask)

    assert torch.isfinite(logits).all()
    assert torch.equal(logits, network(inputs, mask)[0])


def test_each_sample_uses_its_own_mask():
    network = make_network()
    inputs = random_inputs(network, 3)
    masks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)

    together, _ = network(inputs, masks)
    for row in range(3):
        alone, _ = network({name: value[row : row + 1] for name, value in inputs.items()}, masks[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, rtol=0, atol=1e-12)


def test_used_modality_changes_output():
    network = make_network()
    inputs = random_inputs(network, 2)
    changed = dict(inputs, view0=inputs["view0"] + 1.0)
    mask = torch.tensor([[1, 0, 1]] * 2, dtype=torch.bool)

    assert not torch.allclose(network(inputs, mask)[0], network(changed, mask)[0])


def test_embedding_norm_by_kind():
    inputs_mask = torch.ones(4, 3, dtype=torch.bool)
    cosine = make_network(embedding="cosine")
    euclidean = make_network(embedding="euclidean")

    cosine_norm = cosine(random_inputs(cosine, 4), inputs_mask)[1].norm(dim=-1)
    euclidean_norm = euclidean(random_inputs(euclidean, 4), inputs_mask)[1].norm(dim=-1)

    torch.testing.assert_close(cosine_norm, torch.ones(4, dtype=torch.float64))
    assert not torch.allclose(euclidean_norm, torch.ones(4, dtype=torch.float64))


def test_config_rebuilds_same_network():
    network = make_network()
    rebuilt = MaskedFusionTransformer(**network.config).double().eval()
    rebuilt.load_state_dict(network.state_dict())
    inputs = random_inputs(network, 2)
    mask = torch.ones(2, 3, dtype=torch.bool)

    assert torch.equal(network(inputs, mask)[0], rebuilt(inputs, mask)[0])
    assert network_fingerprint(rebuilt) == network_fingerprint(network)


def test_fingerprint_changes_with_weights():
    network = make_network()
    before = network_fingerprint(network)
    with torch.no_grad():
        network.classifier.bias[0] += 1e-6

    assert network_fingerprint(network) != before


def test_mixed_encoders_in_one_network():
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "cine", "encoder": "image", "kind": "2d+t", "backbone": "resnet10", "widths": [4, 8, 8, 16], "token_grid": [2, 2, 1]},
            {"name": "clinical", "encoder": "tabular", "categorical_cardinalities": [2, 4], "num_continuous": 3, "dim": 8, "heads": 2},
        ],
        num_classes=2,
        dim=16,
        heads=4,
        projection_dim=8,
    ).eval()
    inputs = {
        "cine": torch.randn(2, 1, 32, 32, 4),
        "clinical": {
            "categorical": torch.tensor([[0, 3], [1, -1]]),
            "continuous": torch.randn(2, 3),
            "missing_values": torch.tensor([[False] * 5, [False, True, False, False, False]]),
        },
    }

    logits, embedding = network(inputs, torch.tensor([[True, True], [False, True]]))

    assert network.token_counts == [4, 5]
    assert logits.shape == (2, 2)
    assert embedding.shape == (2, 8)


@pytest.mark.parametrize(
    "mask, error, message",
    [
        (torch.ones(2, 2, dtype=torch.bool), ValueError, r"present_mask must have shape \(2, 3\) .* got \(2, 2\)"),
        (torch.ones(2, 3, dtype=torch.long), TypeError, "present_mask must be a bool tensor"),
    ],
)
def test_fuse_rejects_bad_mask(mask, error, message):
    network = make_network()
    tokens = network.encode(random_inputs(network, 2))

    with pytest.raises(error, match=message):
        network.fuse(tokens, mask)


def test_fuse_rejects_wrong_token_count():
    network = make_network()

    with pytest.raises(ValueError, match=r"tokens must have shape \(B, 6, 16\), got \(2, 5, 16\)"):
        network.fuse(torch.zeros(2, 5, 16, dtype=torch.float64), torch.ones(2, 3, dtype=torch.bool))


def test_encode_names_missing_modality():
    network = make_network()
    inputs = random_inputs(network, 2)
    del inputs["view2"]

    with pytest.raises(KeyError, match="view2"):
        network.encode(inputs)


@pytest.mark.parametrize(
    "modalities, message",
    [
        ([{"name": "a", "encoder": "features", "in_features": 2}] * 2, "unique"),
        ([{"name": "a", "encoder": "transformer"}], "encoder must be one of"),
        ([{"name": "a"}], "'name' and 'encoder' keys"),
        ([{"name": "a", "encoder": "features", "in_features": 2, "depth": 3}], "invalid arguments for the 'features' encoder"),
        ([], "num_modalities must be between 1 and 16, got 0"),
    ],
)
def test_bad_modality_specifications(modalities, message):
    with pytest.raises(ValueError, match=message):
        MaskedFusionTransformer(modalities, num_classes=2, dim=16, heads=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"embedding": "dot"}, "embedding must be one of"),
        ({"heads": 5}, "divisible"),
        ({"projection_dim": 0}, "projection_dim must be a positive int, got 0"),
        ({"depth": -1}, "depth must be a non-negative int, got -1"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_network_arguments(kwargs, message):
    arguments = {"num_classes": 2, "dim": 16, "heads": 4} | kwargs

    with pytest.raises(ValueError, match=message):
        MaskedFusionTransformer(feature_modalities(2), **arguments)


def test_modalities_given_as_mapping_rejected():
    with pytest.raises(TypeError, match="modalities must be a list of modality specifications"):
        MaskedFusionTransformer({"name": "a", "encoder": "features", "in_features": 2}, num_classes=2, dim=16, heads=4)


def test_encode_with_mask_zeroes_absent_rows():
    network = make_network()
    inputs = random_inputs(network, 4)
    inputs["view1"][1] = float("nan")
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)

    tokens = network.encode(inputs, mask)
    reference = network.encode(inputs | {"view1": inputs["view1"].nan_to_num()})

    for name in network.modality_names:
        positions = network.token_slice(name)
        present = mask[:, network.modality_names.index(name)]
        assert torch.equal(tokens[~present, positions], torch.zeros_like(tokens[~present, positions]))
        torch.testing.assert_close(tokens[present, positions], reference[present, positions], rtol=0, atol=1e-12)
    assert torch.isfinite(tokens).all()


def test_encode_with_mask_skips_encoder_without_present_row():
    network = make_network()
    calls = []
    network.encoders[2].register_forward_hook(lambda module, args, output: calls.append(1))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)

    tokens = network.encode(random_inputs(network, 2), mask)

    assert calls == []
    assert torch.equal(tokens[:, network.token_slice("view2")], torch.zeros(2, 3, 16, dtype=torch.float64))


def test_encode_keeps_placeholder_out_of_batch_norm_statistics():
    torch.manual_seed(0)
    modality = {"name": "image", "encoder": "image", "kind": "2d", "backbone": "resnet10", "widths": [4, 4, 4, 4], "token_grid": [1, 1]}
    network = MaskedFusionTransformer([modality], num_classes=2, dim=8, heads=2).train()
    images = torch.randn(4, 1, 32, 32)
    mask = torch.tensor([[True], [True], [True], [False]])

    with_placeholder = network.encode({"image": torch.cat([images[:3], torch.zeros(1, 1, 32, 32)])}, mask)
    present_only = network.encode({"image": images[:3]})

    torch.testing.assert_close(with_placeholder[:3], present_only)


def test_encode_names_modality_when_encoder_fails():
    network = make_network()
    inputs = random_inputs(network, 2)
    inputs["view1"] = torch.zeros(2, 7, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"modality 'view1': the 'features' encoder failed on an input of shape \(2, 7\)"):
        network.encode(inputs)


def test_encode_rejects_mixed_batch_sizes():
    network = make_network()
    inputs = random_inputs(network, 2)
    inputs["view0"] = inputs["view0"][:1]

    with pytest.raises(ValueError, match="same batch size B .*'view0': 1, 'view1': 2"):
        network.encode(inputs)


def test_numpy_numbers_become_plain_config():
    network = MaskedFusionTransformer(
        [{"name": "a", "encoder": "features", "in_features": np.int64(4), "num_tokens": np.int32(2)}],
        num_classes=np.int64(2),
        dim=16,
        heads=4,
        dropout=np.float64(0.1),
    )

    assert type(network.config["num_classes"]) is int
    assert type(network.config["modalities"][0]["in_features"]) is int
    assert type(network.config["dropout"]) is float
    assert len(network_fingerprint(network)) == 64


def test_non_plain_config_value_rejected():
    with pytest.raises(TypeError, match=r"modalities\[0\].in_features must be plain data .* got Tensor"):
        MaskedFusionTransformer(
            [{"name": "a", "encoder": "features", "in_features": torch.tensor(4)}], num_classes=2, dim=16, heads=4
        )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_classes": 2.0}, ValueError, "num_classes must be a positive int, got 2.0"),
        ({"num_classes": "2"}, ValueError, "num_classes must be a positive int, got '2'"),
        ({"dropout": "0.1"}, TypeError, "dropout must be a number, got str"),
        ({"mlp_ratio": 0}, ValueError, "mlp_ratio must be positive, got 0"),
        ({"heads": 0}, ValueError, "heads must be a positive int, got 0"),
    ],
)
def test_network_argument_types(kwargs, error, message):
    arguments = {"num_classes": 2, "dim": 16, "heads": 4} | kwargs

    with pytest.raises(error, match=message):
        MaskedFusionTransformer(feature_modalities(2), **arguments)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": 3, "encoder": "features", "in_features": 2}, "'name' must be a non-empty string, got 3"),
        ({"name": "a", "encoder": "features", "in_features": 0}, "modality 'a': invalid arguments for the 'features' encoder"),
        ({"name": "t", "encoder": "tabular", "num_continuous": 2, "dim": 0}, "modality 't': .* dim must be an int of at least 1"),
    ],
)
def test_modality_errors_name_the_modality(spec, message):
    with pytest.raises(ValueError, match=message):
        MaskedFusionTransformer([spec], num_classes=2, dim=16, heads=4)


def test_fuse_rejects_wrong_width_and_dtype():
    network = make_network()
    mask = torch.ones(2, 3, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"tokens must have shape \(B, 6, 16\), got \(2, 6, 8\)"):
        network.fuse(torch.zeros(2, 6, 8, dtype=torch.float64), mask)
    with pytest.raises(TypeError, match="tokens have dtype torch.float32 but the network's weights are torch.float64"):
        network.fuse(torch.zeros(2, 6, 16), mask)


def test_encode_rejects_numpy_input():
    network = make_network()
    inputs = random_inputs(network, 2)
    inputs["view0"] = inputs["view0"].numpy()

    with pytest.raises(TypeError, match="input of modality 'view0' must be a tensor or a mapping of tensors, got ndarray"):
        network.encode(inputs)


def test_encode_checks_every_tensor_of_a_mapping_input():
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "a", "encoder": "features", "in_features": 2},
            {"name": "t", "encoder": "tabular", "categorical_cardinalities": [2], "num_continuous": 1, "dim": 8, "heads": 2},
        ],
        num_classes=2,
        dim=16,
        heads=4,
    ).eval()
    inputs = {"a": torch.zeros(4, 2), "t": {"categorical": torch.zeros(4, 1, dtype=torch.long), "continuous": torch.zeros(3, 1)}}

    with pytest.raises(ValueError, match=r"same batch size B .*'t.continuous': 3"):
        network.encode(inputs, torch.ones(4, 2, dtype=torch.bool))
