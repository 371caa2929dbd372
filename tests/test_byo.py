"""Bring your own, without traps: torch datasets, a classifier that wants normalised input, and a
``limit`` that samples every class.

Fashion-MNIST is read through torchvision from the offline IDX files (Debian's
dataset-fashion-mnist; the tests that need them skip without).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

import defuse_widgets as dw
from defuse_widgets.data.loaders import DEBIAN_FASHION_DIR, FASHION_CLASSES, IDX_FILES
from defuse_widgets.data.loaders import _prepare_idx_root as prepare_idx_root
from defuse_widgets.search.identify import limit_rows

needs_fashion = pytest.mark.skipif(
    not all((DEBIAN_FASHION_DIR / f"{f}.gz").is_file() for f in IDX_FILES)
    and not all((DEBIAN_FASHION_DIR / f).is_file() for f in IDX_FILES),
    reason=f"Fashion-MNIST files not in {DEBIAN_FASHION_DIR} (make data installs them)",
)


@pytest.fixture(scope="module")
def fashion_root() -> Path:
    """A torchvision root holding the extracted IDX files (extracted once into the cache)."""
    return prepare_idx_root(DEBIAN_FASHION_DIR, "FashionMNIST", "fashion-mnist", download=False)


@needs_fashion
def test_from_torch_dataset_reads_torchvision_fashion_mnist(fashion_root: Path) -> None:
    from torchvision import datasets, transforms

    train = datasets.FashionMNIST(str(fashion_root), train=True, download=False)  # PIL images
    test = datasets.FashionMNIST(
        str(fashion_root), train=False, download=False, transform=transforms.ToTensor()
    )
    data = dw.from_torch_dataset(
        train, test, train_limit=500, test_limit=200, seed=3, progress=False
    )
    assert data.name == "FashionMNIST" and data.classes == FASHION_CLASSES
    assert data.image_shape == (1, 28, 28) and len(data.y_train) == 500 and len(data.y_test) == 200
    # a stratified sample: every class in its share
    assert torch.bincount(data.y_train, minlength=10).tolist() == [50] * 10
    assert torch.bincount(data.y_test, minlength=10).tolist() == [20] * 10
    # the same pixels and labels as torchvision's raw arrays: find each test image among them
    raw = test.data.float() / 255
    flat = raw.flatten(1)
    for image, label in zip(data.x_test[:20], data.y_test[:20]):
        match = (flat == image.flatten()).all(1).nonzero().flatten()
        assert len(match) >= 1 and int(test.targets[match[0]]) == int(label)
    # the PIL and the ToTensor paths read the same pixels
    again = dw.from_torch_dataset(train, test, train_limit=500, test_limit=200, seed=3,
                                  progress=False)  # fmt: skip
    assert torch.equal(again.x_train, data.x_train)


@needs_fashion
def test_a_normalising_transform_is_refused_with_the_fix(fashion_root: Path) -> None:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.286,), (0.353,))])
    test = datasets.FashionMNIST(str(fashion_root), train=False, download=False, transform=tf)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*dw\.Normalized"):
        dw.from_torch_dataset(test, test_limit=40, train_limit=40, progress=False)


def test_from_torch_dataset_reads_a_tensor_dataset_and_holds_out_a_test_split(
    digits: dw.ImageDataset,
) -> None:
    x, y = digits.x_train[:300], digits.y_train[:300]
    data = dw.from_torch_dataset(TensorDataset(x, y), test_fraction=0.2, progress=False)
    assert data.classes == tuple(str(i) for i in range(10))
    assert len(data.y_train) == 240 and len(data.y_test) == 60
    assert data.name == "TensorDataset"
    # every image read once, the held-out share stratified by class
    labels = torch.cat([data.y_train, data.y_test])
    assert torch.equal(torch.bincount(labels, minlength=10), torch.bincount(y, minlength=10))
    share = torch.bincount(data.y_test, minlength=10) / torch.bincount(y, minlength=10)
    assert share.min() > 0.1 and share.max() < 0.3
    assert torch.allclose(torch.cat([data.x_train, data.x_test]).sum(), x.sum())
    # uint8 (H, W) images and 0-d tensor labels, with names
    u8 = (x[:, 0] * 255).round().to(torch.uint8)
    named = dw.from_torch_dataset(
        TensorDataset(u8[:200], y[:200]), TensorDataset(u8[200:], y[200:]), digits.classes,
        name="mine", progress=False,
    )  # fmt: skip
    assert named.name == "mine" and named.image_shape == (1, 8, 8)
    assert torch.allclose(named.x_test, x[200:], atol=1 / 255)


class _Pairs(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> object:
        return self.items[i]


class _Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield torch.rand(1, 8, 8), 0


def test_from_torch_dataset_names_what_is_wrong() -> None:
    good = [(torch.rand(1, 8, 8), i % 2) for i in range(4)]
    with pytest.raises(TypeError, match="train: expected a map-style dataset"):
        dw.from_torch_dataset(_Stream(), _Pairs(good))
    with pytest.raises(ValueError, match="test: expected a dataset with images"):
        dw.from_torch_dataset(_Pairs(good), _Pairs([]))
    sizes = [*good, (torch.rand(1, 9, 8), 0)]
    with pytest.raises(ValueError, match=r"train: image 4 has shape \(1, 9, 8\).*Resize"):
        dw.from_torch_dataset(_Pairs(sizes), _Pairs(good), progress=False)
    with pytest.raises(ValueError, match="expected each item to be \\(image, label\\)"):
        dw.from_torch_dataset(_Pairs([torch.rand(1, 8, 8)] * 4), _Pairs(good), progress=False)
    with pytest.raises(ValueError, match="label is 0.5, expected an integer class index"):
        dw.from_torch_dataset(_Pairs([(torch.rand(1, 8, 8), 0.5)] * 4), _Pairs(good),
                              progress=False)  # fmt: skip


class _Unnormalise(nn.Module):
    """``model`` on un-normalised input: Normalized(_Unnormalise(model)) is ``model`` again."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.std + self.mean)


def test_normalized_normalises_round_trips_and_refuses_bad_arguments(
    digits_classifier: nn.Module, tmp_path: Path
) -> None:
    inner = copy.deepcopy(digits_classifier)
    model = dw.Normalized(inner, mean=0.3, std=0.4)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), inner((x - 0.3) / 0.4))
    assert set(model.state_dict()) == {"mean", "std", *(f"model.{k}" for k in inner.state_dict())}
    assert all(not n.startswith(("mean", "std")) for n, _ in model.named_parameters())
    dw.save_weights(model, tmp_path / "clf.safetensors")
    again = dw.load_weights(
        dw.Normalized(copy.deepcopy(digits_classifier), mean=0.0, std=1.0),
        tmp_path / "clf.safetensors",
    )
    assert float(again.mean) == pytest.approx(0.3) and float(again.std) == pytest.approx(0.4)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    rgb = dw.Normalized(nn.Flatten(), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    assert rgb(torch.full((1, 3, 2, 2), 0.5))[0, :4].tolist() == pytest.approx([0.0] * 4)
    with pytest.raises(ValueError, match="x: expected images with 3 channels"):
        rgb(torch.rand(1, 1, 2, 2))
    with pytest.raises(ValueError, match="std: expected positive values"):
        dw.Normalized(inner, 0.5, 0.0)
    with pytest.raises(ValueError, match="one value per channel"):
        dw.Normalized(inner, (0.1, 0.2), (0.3, 0.4, 0.5))
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        dw.Normalized(lambda x: x, 0.5, 0.5)


def test_a_session_runs_identify_and_a_round_with_a_normalized_classifier(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    # a classifier that wants (x - 0.3) / 0.4, wrapped: the same function as digits_classifier
    wrapped = dw.Normalized(_Unnormalise(copy.deepcopy(digits_classifier), 0.3, 0.4), 0.3, 0.4)
    plain = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                             progress=False)  # fmt: skip
    s = dw.DefuseSession(wrapped, digits_vae, digits, device="cpu", progress=False)
    options = {"limit": 40, "samples": 20, "max_per_image": 2}
    errors, expected = s.identify(**options), plain.identify(**options)
    assert len(errors) == len(expected) > 0
    assert torch.equal(errors.source_index, expected.source_index)
    assert torch.equal(errors.pred_label, expected.pred_label)
    s.distill(max_regions=4)
    assert s.regions is not None
    s.label(s.regions.ids[0], s.regions.regions[0].transition[0])
    record = s.correct(steps=10, batch_size=16, early_stopping=False)
    assert record.evaluation is not None and s.active_round == 1
    assert float(wrapped.mean) == pytest.approx(0.3)  # buffers untouched by fine-tuning
    s.revert()


def test_identify_limit_samples_every_class_of_a_split_sorted_by_class(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    order = torch.argsort(digits.y_test, stable=True)  # a folder of images per class, in order
    x, y = digits.x_test[order], digits.y_test[order]
    sorted_data = dw.from_tensors(digits.x_train, digits.y_train, x, y, digits.classes, "sorted")
    y = sorted_data.y_test
    picked = limit_rows(torch.arange(len(y)), y, 50, "stratified", seed=0)
    assert torch.bincount(y[picked], minlength=10).tolist() == [5] * 10
    assert torch.equal(picked, limit_rows(torch.arange(len(y)), y, 50, "stratified", seed=0))
    assert not torch.equal(picked, limit_rows(torch.arange(len(y)), y, 50, "stratified", seed=1))
    first = limit_rows(torch.arange(len(y)), y, 40, "first", seed=0)  # 45 test 0s
    assert y[first].unique().tolist() == [0]
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, sorted_data,
                         device="cpu", progress=False)  # fmt: skip
    errors = s.identify(limit=50, samples=30, max_per_image=3)
    assert errors.images_searched == 50
    assert set(errors.source_index.tolist()) <= set(picked.tolist())
    assert len(errors.true_label.unique()) > 1  # errors from several classes, not only 0s
    old = s.identify(limit=40, limit_order="first", samples=30, max_per_image=3)
    assert set(old.true_label.tolist()) <= {0}
    with pytest.raises(ValueError, match="limit_order: expected one of"):
        s.identify(limit=50, limit_order="random")
