"""DefuseSession: construction checks, the documented API, state replacement and helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from session_fixtures import IDENTIFY, LIMIT, new_session, ready_session, shared_errors
from torch import nn

import defuse_widgets as dw


class WrongShapeDecoder(nn.Module):
    """A VAE-like module whose decoder returns 4x4 images."""

    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(x.flatten(1))
        return h[:, :2], h[:, 2:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(z), 1, 4, 4)


class ThreeClasses(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 3)


def test_constructor_checks(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    with pytest.raises(TypeError, match="data"):
        dw.DefuseSession(digits_classifier, digits_vae, digits.x_test, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generator"):
        dw.DefuseSession(digits_classifier, WrongShapeDecoder(), digits, device="cpu")
    with pytest.raises(ValueError):
        dw.DefuseSession(ThreeClasses(), digits_vae, digits, device="cpu")


def test_fresh_session_state(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = new_session(digits_classifier, digits_vae, digits, seed=3)
    assert s.seed == 3 and s.device == torch.device("cpu")
    assert s.errors is None and s.regions is None and s.labels == {}
    assert s.rounds == 0 and s.active_round == 0 and s.history == []
    assert not s.classifier.training
    assert "digits" in repr(s) and "rounds=0" in repr(s)


def test_documented_api_end_to_end(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    """The calls of the issue's example, on a small budget."""
    s = dw.DefuseSession(
        classifier=copy.deepcopy(digits_classifier),
        generator=digits_vae,
        data=digits,
        device="auto",
        seed=0,
        progress=False,
    )
    errors = s.identify(strategy="reference", split="test", limit=LIMIT, **IDENTIFY)
    assert isinstance(errors, dw.ErrorSet) and errors.images_searched == LIMIT
    assert s.errors is errors
    regions = s.distill(max_regions=5, min_weight=0.01)
    assert isinstance(regions, dw.RegionSet) and s.regions is regions and len(regions) >= 2
    s.label(regions.ids[0], regions.get(regions.ids[0]).transition[0])
    s.label(regions.ids[1], dw.MODEL_IS_RIGHT)
    s.unlabel(regions.ids[1])
    history = s.correct(steps=3, lam=1.0, batch_size=16)
    assert history.round == 1
    ev = s.evaluate()
    assert {"test_accuracy", "per_class", "regions"} <= set(ev.to_dict())
    s.revert()
    assert s.active_round == 0
    assert "errors=" in repr(s) and "rounds=1" in repr(s)


def test_identify_is_seeded_and_replaces_regions_and_labels(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    shared = shared_errors(digits_classifier, digits_vae, digits)
    s.label(0, 1)
    errors = s.identify(
        strategy="reference", split="test", limit=LIMIT, limit_order="first", **IDENTIFY
    )
    assert torch.equal(errors.codes, shared.codes), "same seed, same errors"
    assert s.regions is None and s.labels == {}
    errors = s.identify(strategy="reference", split="train", limit=20, **IDENTIFY)
    assert errors.split == "train" and errors.images_searched == 20
    assert torch.equal(errors.true_label, digits.y_train[errors.source_index])


def test_search_leaves_the_session_and_adopt_takes_its_errors(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    """``search`` returns the errors without touching the session; ``adopt`` makes errors,
    regions and labels the session's after checking them all, with one event each."""
    s = ready_session(digits_classifier, digits_vae, digits)
    shared = shared_errors(digits_classifier, digits_vae, digits)
    s.label(0, 1)
    before = (s.errors, s.regions, s.labels)
    found = s.search(strategy="reference", limit=LIMIT, limit_order="first", **IDENTIFY)
    assert torch.equal(found.codes, shared.codes) and found is not s.errors
    assert (s.errors, s.regions, s.labels) == before
    events: list[str] = []
    s.observe(events.append)
    regions = dw.fit_regions(found, max_regions=4, seed=0)
    bad = [
        (TypeError, "errors: expected an ErrorSet", dict(errors=found.codes)),
        (ValueError, r"regions: expected regions over the \d+ errors",
         dict(errors=found.subset(torch.arange(5)), regions=regions)),
        (ValueError, "labels: regions to label are needed", dict(errors=found, labels={0: 1})),
        (KeyError, "known ids", dict(errors=found, regions=regions, labels={99: 1})),
        (ValueError, "label", dict(errors=found, regions=regions, labels={0: 99})),
        (ValueError, "labels: expected a mapping, 'keep' or None", dict(errors=found,
                                                                        regions=regions,
                                                                        labels="all")),
    ]  # fmt: skip
    for exc, match, kwargs in bad:
        with pytest.raises(exc, match=match):
            s.adopt(**kwargs)
        assert (s.errors, s.regions, s.labels) == before and events == []
    s.adopt(found, regions, "keep")  # region 0 is still there: its label stays
    assert s.errors is found and s.regions is regions and s.labels == {0: 1}
    assert events == ["errors", "regions", "labels"]
    s.adopt(found)
    assert s.regions is None and s.labels == {}


def test_failed_identify_keeps_the_session(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    s.label(0, 1)
    errors, regions = s.errors, s.regions
    with pytest.raises(ValueError, match="strategy"):
        s.identify(strategy="telepathy", limit=5)
    with pytest.raises(ValueError, match="split"):
        s.identify(split="validation", limit=5)
    with pytest.raises(ValueError, match="samples"):
        s.identify(limit=5, samples=0)
    assert s.errors is errors and s.regions is regions and s.labels == {0: 1}


def test_encode_decode_predict(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = new_session(digits_classifier, digits_vae, digits)
    x = digits.x_test[:10]
    z = s.encode(x, batch_size=3)
    assert z.shape == (10, digits_vae.latent_dim) and z.device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(z, digits_vae.encode(x)[0], atol=1e-6)
    images = s.decode(z, batch_size=4)
    assert images.shape == (10, *digits.image_shape)
    probs = s.predict(x, batch_size=4)
    assert probs.shape == (10, digits.num_classes)
    assert torch.allclose(probs.sum(1), torch.ones(10), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(probs.argmax(1), s.classifier(x).argmax(1))
    assert s.encode(x[:0]).shape == (0, digits_vae.latent_dim)
    assert s.decode(z[:0]).shape == (0, *digits.image_shape)
    assert s.predict(x[:0]).shape == (0, digits.num_classes)
    codes = s.split_codes("test")
    assert codes.shape == (len(digits.y_test), digits_vae.latent_dim)
    assert s.split_codes("test") is codes, "cached"


def test_session_does_not_touch_the_shared_models(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    """new_session copies the classifier: a round must not reach the session-wide fixture."""
    before = {k: v.clone() for k, v in digits_classifier.state_dict().items()}
    s = ready_session(digits_classifier, digits_vae, digits)
    s.label(0, s.regions.get(0).transition[0])  # type: ignore[union-attr]
    s.correct(steps=2, batch_size=8)
    for k, v in digits_classifier.state_dict().items():
        assert torch.equal(v, before[k])


def test_observers_get_each_change_and_can_stop(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    seen: list[str] = []
    stop = s.observe(seen.append)
    rid = s.regions.regions[0].id  # type: ignore[union-attr]
    s.label(rid, 1)
    s.unlabel(rid)
    s.unlabel(rid)  # no label left: nothing changed, no event
    s.relabel([0], (int(s.data.y_train[0]) + 1) % 10)
    s.unrelabel([0])
    s.revert()
    assert seen == ["labels", "labels", "relabels", "relabels", "model"]

    class View:  # a widget-like observer, held weakly
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_event(self, event: str) -> None:
            self.events.append(event)

    view = View()
    s.observe(view.on_event)
    s.add_region([0, 1, 2])
    assert view.events == ["regions"] and seen[-1] == "regions"
    del view  # gone: the session drops it at the next change
    stop()  # and this one stops listening
    s.distill(max_regions=4)
    assert seen[-1] == "regions" and len(s.changed) == 0

    def broken(event: str) -> None:
        raise RuntimeError("view is gone")

    s.observe(broken)
    with pytest.warns(UserWarning, match="session observer failed on 'labels'"):
        s.label(s.regions.regions[0].id, 2)  # type: ignore[union-attr]
    assert s.labels == {s.regions.regions[0].id: 2}  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="callback"):
        s.observe("not callable")  # type: ignore[arg-type]
