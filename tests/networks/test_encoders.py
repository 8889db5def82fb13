import pytest
import torch

from pipeline.networks import FeatureEncoder, ImageEncoder, TabularTokenizer


@pytest.mark.parametrize(
    "kind, shape, grid",
    [
        ("2d", (2, 1, 32, 32), (4, 4)),
        ("2d+t", (2, 1, 32, 32, 8), (2, 2, 2)),
        ("3d", (2, 2, 16, 16, 16), (1, 2, 2)),
    ],
)
def test_image_encoder_token_shape(kind, shape, grid):
    encoder = ImageEncoder(kind=kind, in_channels=shape[1], backbone="resnet10", widths=(4, 8, 8, 16), token_grid=grid)

    tokens = encoder(torch.randn(shape))

    assert tokens.shape == (2, encoder.num_tokens, 16)
    assert encoder.num_tokens == int(torch.tensor(grid).prod())


def test_image_encoder_bottleneck_width():
    encoder = ImageEncoder(kind="2d", backbone="resnet50", widths=(4, 4, 4, 8), token_grid=(1, 1)).eval()

    assert encoder.out_features == 32
    assert encoder(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32)


def test_cine_encoder_keeps_frames_in_first_convolution():
    encoder = ImageEncoder(kind="2d+t", backbone="resnet10", widths=(4, 8, 8, 16), token_grid=(1, 1, 4))

    assert encoder.resnet.conv1.stride == (2, 2, 1)


def test_image_encoder_rejects_wrong_rank():
    encoder = ImageEncoder(kind="2d+t", backbone="resnet10", widths=(4, 8, 8, 16), token_grid=(1, 1, 1))

    with pytest.raises(ValueError, match=r"5-D input .* got shape \(2, 1, 32, 32\)"):
        encoder(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "4d"}, "kind must be one of"),
        ({"backbone": "vgg16"}, "backbone must be one of"),
        ({"widths": (8, 8, 8)}, "widths must be 4"),
        ({"kind": "3d", "token_grid": (2, 2)}, "token_grid must have 3"),
    ],
)
def test_image_encoder_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageEncoder(**kwargs)


def make_tokenizer() -> TabularTokenizer:
    torch.manual_seed(0)
    return TabularTokenizer(categorical_cardinalities=[2, 3], num_continuous=2, dim=8, depth=0, heads=2).eval()


def test_tabular_one_token_per_column():
    tokenizer = make_tokenizer()

    tokens = tokenizer(torch.tensor([[0, 2], [1, 0]]), torch.randn(2, 2))

    assert tokens.shape == (2, 4, 8)


def test_tabular_missing_value_ignores_placeholder():
    tokenizer = make_tokenizer()
    missing = torch.tensor([[False, True, False, True]])

    first = tokenizer(torch.tensor([[1, 0]]), torch.tensor([[0.5, 3.0]]), missing)
    second = tokenizer(torch.tensor([[1, -1]]), torch.tensor([[0.5, float("nan")]]), missing)

    assert torch.equal(first, second)
    assert torch.isfinite(second).all()


def test_tabular_mask_token_differs_from_value():
    tokenizer = make_tokenizer()
    observed = torch.zeros(1, 4, dtype=torch.bool)
    masked = observed.clone()
    masked[0, 2] = True

    without = tokenizer(torch.tensor([[1, 0]]), torch.tensor([[0.5, 3.0]]), observed)
    with_mask = tokenizer(torch.tensor([[1, 0]]), torch.tensor([[0.5, 3.0]]), masked)

    assert not torch.allclose(without[0, 2], with_mask[0, 2])
    assert torch.equal(without[0, [0, 1, 3]], with_mask[0, [0, 1, 3]])


def test_tabular_categorical_levels_use_own_embeddings():
    tokenizer = make_tokenizer()

    tokens = tokenizer(torch.tensor([[0, 0], [1, 0]]), torch.zeros(2, 2))

    assert not torch.allclose(tokens[0, 0], tokens[1, 0])
    assert torch.equal(tokens[0, 1:], tokens[1, 1:])


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ({"categorical": torch.zeros(2, 3, dtype=torch.long), "continuous": torch.zeros(2, 2)}, ValueError, r"categorical of shape \(B, 2\)"),
        ({"categorical": torch.zeros(2, 2, dtype=torch.long)}, ValueError, r"continuous of shape \(B, 2\), got None"),
        (
            {"categorical": torch.zeros(2, 2, dtype=torch.long), "continuous": torch.zeros(2, 2), "missing_values": torch.zeros(2, 4)},
            TypeError,
            "missing_values must be a bool tensor",
        ),
        (
            {"categorical": torch.zeros(2, 2, dtype=torch.long), "continuous": torch.zeros(2, 2), "missing_values": torch.zeros(2, 3, dtype=torch.bool)},
            ValueError,
            r"missing_values must have shape \(2, 4\)",
        ),
    ],
)
def test_tabular_bad_inputs(inputs, error, message):
    with pytest.raises(error, match=message):
        make_tokenizer()(**inputs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"categorical_cardinalities": [2, 0]}, "at least 1"),
        ({}, "at least one categorical or continuous column"),
        ({"num_continuous": 2, "dim": 10, "heads": 4}, "divisible"),
    ],
)
def test_tabular_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TabularTokenizer(**kwargs)


def test_feature_encoder_shape_and_error():
    encoder = FeatureEncoder(in_features=5, num_tokens=3, out_features=4)

    assert encoder(torch.randn(2, 5)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"got \(2, 5, 1\)"):
        encoder(torch.randn(2, 5, 1))


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        (
            {"categorical": torch.tensor([[1, 3]]), "continuous": torch.zeros(1, 2)},
            ValueError,
            r"categorical column 1 has level 3 in row 0, outside \[0, 3\)",
        ),
        (
            {"categorical": torch.tensor([[-1, 0]]), "continuous": torch.zeros(1, 2)},
            ValueError,
            "categorical column 0 has level -1 in row 0",
        ),
        (
            {"categorical": torch.tensor([[1.0, 0.0]]), "continuous": torch.zeros(1, 2)},
            TypeError,
            "categorical must be an integer tensor of level indices, got dtype torch.float32",
        ),
        (
            {"categorical": torch.tensor([[1, 0]]), "continuous": torch.tensor([[0.0, float("nan")]])},
            ValueError,
            "continuous column 1 is nan in row 0 but not marked in missing_values",
        ),
    ],
)
def test_tabular_rejects_unmarked_invalid_values(inputs, error, message):
    with pytest.raises(error, match=message):
        make_tokenizer()(**inputs)


def test_tabular_accepts_invalid_values_marked_missing():
    missing = torch.tensor([[False, True, False, True]])

    tokens = make_tokenizer()(torch.tensor([[1, 7]]), torch.tensor([[0.0, float("inf")]]), missing)

    assert torch.isfinite(tokens).all()


def test_batch_norm_encoder_rejects_single_training_image():
    encoder = ImageEncoder(kind="2d", backbone="resnet10", widths=(4, 4, 4, 4), token_grid=(1, 1)).train()

    with pytest.raises(ValueError, match="training batch of 1 image.*at least 2 subjects with the image"):
        encoder(torch.randn(1, 1, 32, 32))


def test_image_encoder_rejects_zero_channels():
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        ImageEncoder(in_channels=0)


def test_small_stem_distinct_tokens():
    torch.manual_seed(0)
    standard = ImageEncoder("2d", backbone="resnet10", widths=(4, 8, 8, 16), token_grid=(2, 2)).eval()
    small = ImageEncoder("2d", backbone="resnet10", widths=(4, 8, 8, 16), token_grid=(2, 2), small_input_stem=True).eval()
    images = torch.randn(3, 1, 28, 28)

    with torch.no_grad():
        standard_tokens = standard(images)
        small_tokens = small(images)

    # The standard stem shrinks 28 pixels to a 1 x 1 map, so its 4 pooled tokens are copies.
    assert torch.allclose(standard_tokens[:, 0], standard_tokens[:, 3])
    assert not torch.allclose(small_tokens[:, 0], small_tokens[:, 3])


def test_small_input_stem_rejects_volumes():
    with pytest.raises(ValueError, match="small_input_stem"):
        ImageEncoder("3d", token_grid=(1, 1, 1), small_input_stem=True)
