"""The statistical guard: paired intervals of a drop, the split's resolution, the leak check."""

from __future__ import annotations

import warnings

import pytest
import torch
from session_fixtures import flips, label_true_class, ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.correction.selection import EarlyStopping, Score, paired_harm
from defuse_widgets.correction.statistics import BLIND_POINTS, images_to_resolve, paired_change
from defuse_widgets.correction.validation import ValidationWarning, leak_note, resolution_note


def test_a_paired_change_counts_the_flips_and_brackets_the_drop() -> None:
    change = paired_change(*flips(600, 12, 0))
    assert (change.lost, change.gained, change.images) == (12, 0, 600)
    assert change.drop == pytest.approx(2.0) and change.low < change.drop <= change.high
    assert change.exceeds(1.0)  # 12 of 600 lost and none gained: real, and more than a point
    small = paired_change(*flips(600, 3, 0))  # 0.5 point: within noise of a 1-point tolerance
    assert not small.exceeds(1.0) and small.low < 0 < small.high
    mixed = paired_change(*flips(600, 20, 14))  # 1 point net, with churn: not sure at all
    assert mixed.drop == pytest.approx(1.0) and not mixed.exceeds(1.0)
    # 3 points of 300 (14 lost, 5 gained): real, but not surely above 1 point; the rule that
    # asked for that kept rounds costing Shirt 3.7 to 6 test points on Fashion-MNIST
    real = paired_change(*flips(300, 14, 5))
    assert real.drop == pytest.approx(3.0) and 0 < real.low < 1.0 and real.exceeds(1.0)
    assert not paired_change(*flips(300, 14, 5)).exceeds(3.0)  # not above a 3-point tolerance
    nothing = paired_change(*flips(50, 0, 0))
    assert (nothing.drop, nothing.low, nothing.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="two \\(n,\\) masks of one shape, got \\(3,\\) and"):
        paired_change(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    narrow = paired_change(*flips(300, 9, 2), confidence=0.8)
    wide = paired_change(*flips(300, 9, 2), confidence=0.99)
    assert wide.low < narrow.low < narrow.drop < narrow.high < wide.high


def test_images_to_resolve_grows_as_the_tolerance_shrinks() -> None:
    one, two, half = images_to_resolve(1.0), images_to_resolve(2.0), images_to_resolve(0.5)
    assert half > one > two > 0
    # at that size a 2-point drop with nothing gained counts as harm, one image fewer does not
    lost = -(-2 * one // 100)
    assert paired_change(*flips(one, lost, 0)).exceeds(1.0)
    assert not paired_change(*flips(one - 1, -(-2 * (one - 1) // 100), 0)).exceeds(1.0)
    with pytest.raises(ValueError, match="tolerance: expected a positive number"):
        images_to_resolve(0.0)


def score(correct: torch.Tensor, labels: torch.Tensor, region: float, step: int = 0) -> Score:
    per_class = [float(correct[labels == c].float().mean()) for c in range(2)]
    counts = torch.bincount(labels, minlength=2).tolist()
    return Score(step, float(correct.float().mean()), per_class, region, counts,
                 correct=correct, labels=labels)  # fmt: skip


def test_the_guard_refuses_only_a_sure_drop_and_says_what_to_do() -> None:
    labels = torch.tensor([0] * 600 + [1] * 600)
    start = torch.ones(1200, dtype=torch.bool)
    noisy = start.clone()
    noisy[:4] = False  # class 0 down 0.7 point: noise for a 1-point tolerance
    hurt = start.clone()
    hurt[:30] = False  # class 0 down 5 points: sure
    assert paired_harm(score(start, labels, 0.1), score(noisy, labels, 0.5)) == []
    broken = paired_harm(score(start, labels, 0.1), score(hurt, labels, 0.5), classes=("a", "b"))
    assert [e["name"] for e in broken] == ["a", "overall"]
    assert broken[0]["low"] > 1.0 and broken[0]["drop"] == pytest.approx(5.0)

    class Scripted:
        def __init__(self, scores: list[Score]):
            self.scores = iter(scores)

        def __call__(self, model: nn.Module, step: int) -> Score:
            return next(self.scores)

    stop = EarlyStopping(Scripted([score(start, labels, 0.1), score(hurt, labels, 0.9, 10)]),
                         nn.Linear(1, 1), patience=1)  # fmt: skip
    stop.check(10, nn.Linear(1, 1))
    reason = stop.finish(10)
    assert "keeps its starting weights" in reason and "cost 0 5.0 points" in reason
    assert "confirm_disputes" in reason and "interval" in reason


def test_a_class_too_small_for_an_interval_is_judged_by_its_plain_drop() -> None:
    # digits: ~30 validation images a class, where no interval can call even 10 points real
    labels = torch.tensor([0] * 27 + [1] * 200)
    start = torch.ones(227, dtype=torch.bool)
    small = start.clone()
    small[:3] = False  # 3 of 27: 11 points, the interval still reaches below zero
    assert paired_change(start[:27], small[:27]).low < 0
    broken = paired_harm(score(start, labels, 0.1), score(small, labels, 0.5))
    assert [e["class"] for e in broken] == [0] and broken[0]["drop"] == pytest.approx(100 * 3 / 27)
    one = start.clone()
    one[0] = False  # a single image never counts
    assert paired_harm(score(start, labels, 0.1), score(one, labels, 0.5)) == []
    larger = start.clone()
    larger[27:30] = False  # 3 of 200: 1.5 points, within noise on a class the interval covers
    assert images_to_resolve(BLIND_POINTS) <= 200
    assert paired_harm(score(start, labels, 0.1), score(larger, labels, 0.5)) == []


def test_resolution_and_leak_notes() -> None:
    assert resolution_note(torch.tensor([0] * 1000 + [1] * 1000), 2, 1.0, 0.9) == ""
    note = resolution_note(torch.tensor([0] * 1000 + [1] * 20), 2, 1.0, 0.9)
    assert "20 images in its smallest class" in note and f"{images_to_resolve(1.0)}" in note
    right = torch.ones(500, dtype=torch.bool)
    test = torch.ones(2000, dtype=torch.bool)
    test[:200] = False  # 90% on test, 100% on validation
    assert "trained on the validation rows" in leak_note(right, test)
    assert "fit_rows" in leak_note(right, test)
    assert leak_note(right[:5], test) == ""  # five images: within noise
    same = right.clone()
    same[:50] = False
    assert leak_note(same, test) == ""
    # validation above test because the training labels differ from the test labels (a planted
    # mislabeled slice): held out, it still sits below the rows the classifier trained on
    held_out = torch.ones(3000, dtype=torch.bool)
    held_out[:300] = False  # 90% on validation, 90% on test: 0 points
    trained = torch.ones(3000, dtype=torch.bool)
    trained[:60] = False  # 98% on training rows
    shifted = torch.ones(2000, dtype=torch.bool)
    shifted[:280] = False  # 86% on test: 4 points below validation
    assert leak_note(held_out, shifted) != ""  # without the training rows: a false alarm
    assert leak_note(held_out, shifted, trained) == ""
    seen = torch.ones(3000, dtype=torch.bool)
    seen[:75] = False  # 97.5%: level with the training rows, 11.5 points above test
    note = leak_note(seen, shifted, trained)
    assert "level with its 98.0% on training rows" in note and "fit_rows" in note


def test_a_gap_one_class_explains_is_named_as_a_shift_not_a_leak() -> None:
    # a model as good on held-out rows as on its own: the training rows cannot tell the two apart
    val_labels, test_labels = torch.arange(10).repeat(30), torch.arange(10).repeat(100)
    validation = torch.ones(300, dtype=torch.bool)
    validation[:3] = False  # 99% on validation, 100% on training rows
    trained = torch.ones(300, dtype=torch.bool)
    rare = torch.ones(1000, dtype=torch.bool)
    rare[(test_labels == 6).nonzero().flatten()[:60]] = False  # 60 of 100 Shirts wrong: 94% on test
    names = [f"c{k}" for k in range(6)] + ["Shirt"] + [f"c{k}" for k in range(7, 10)]
    labels = (val_labels, test_labels)
    note = leak_note(validation, rare, trained, labels=labels, class_names=names)
    assert "class Shirt alone accounts for it" in note
    assert "trained on the validation rows" not in note
    assert "class 6 alone" in leak_note(validation, rare, trained, labels=labels)
    # memorised rows lift every class: the same gap spread over the classes is still a leak
    spread = torch.ones(1000, dtype=torch.bool)
    spread[::16] = False  # ~94% on test, every class a little lower
    note = leak_note(validation, spread, trained, labels=labels, class_names=names)
    assert "trained on the validation rows" in note


def test_a_session_says_when_its_split_cannot_resolve_the_tolerance(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    with pytest.warns(ValidationWarning) as caught:
        s = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False)
    assert any("smallest class" in str(w.message) for w in caught)  # digits: ~13 images a class
    assert s.validation_notes == [str(w.message) for w in caught]
    # the shared classifier never trained on the validation rows: no leak is reported
    assert not [m for m in s.validation_notes if "validation rows" in m]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)
        dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False,
                         validation=None)  # fmt: skip


def test_a_round_upweights_the_real_images_its_regions_point_to(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    rid = s.regions.ids[0]  # type: ignore[union-attr]
    label = label_true_class(s, rid)
    assert s.validation is not None and s.validation.rows is not None
    candidates = s.audit(rid, coverage=None).indices
    in_validation = torch.isin(candidates, s.validation.rows)
    flip = candidates[~in_validation][:5]
    s.relabel(flip, label, who="ann")
    record = s.correct(steps=20, check_every=10)
    assert set(record.real_images) == {rid}
    assert record.real_images[rid] >= len(flip)  # the confirmed relabels count wherever they lie
    assert record.generated_images > 0 and record.settings["real_weight"] is None  # groups
    back = dw.RoundRecord.from_dict(record.to_dict())
    assert back.real_images == record.real_images
    assert back.generated_images == record.generated_images
    plain = s.correct(steps=20, check_every=10, real_weight=1.0)  # the knob reaches the round
    assert plain.settings["real_weight"] == 1.0
    assert s.correct(steps=20, check_every=10, real_weight=10.0).settings["real_weight"] == 10.0
    with pytest.raises(ValueError, match="real_weight"):
        s.correct(steps=20, real_weight=0.5)


def test_the_audit_covers_validation_rows_and_revert_undoes_their_relabels(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    rid = s.regions.ids[0]  # type: ignore[union-attr]
    label = label_true_class(s, rid)
    assert s.validation is not None and s.validation.rows is not None
    candidates = s.audit(rid, coverage=None).indices
    on_validation = candidates[torch.isin(candidates, s.validation.rows)][:3]
    assert len(on_validation) > 0, "the audit looks at the validation rows too"
    before = s.validation_data()[1].clone()
    s.relabel(on_validation, label, who="ann")
    position = (s.validation.rows[:, None] == on_validation).any(1)
    after = s.validation_data()[1]
    assert (after[position] == label).all()  # rounds are judged by the confirmed labels
    assert torch.equal(after[~position], before[~position])
    s.correct(steps=5)
    s.revert(relabels=True)
    assert torch.equal(s.validation_data()[1], before)


def test_the_explorer_says_what_a_round_trained_on() -> None:
    from defuse_widgets.widgets.explorer.panels import trained_on_note

    record = dw.RoundRecord(1, False, {"real_weight": 10.0}, [0.1], 1.0, real_images={3: 40, 5: 2},
                            generated_images=640)  # fmt: skip
    assert trained_on_note(record) == (
        "It trained on 42 real images inside the labeled regions (drawn 10x as often) and 640 "
        "generated region samples."
    )
    assert trained_on_note(dw.RoundRecord(1, False, {}, [], 1.0)) == ""


def test_a_refused_round_names_the_rows_it_changed_and_a_labeler_settles_them(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    with pytest.raises(RuntimeError, match="run a round first"):
        s.disputes()
    rid = s.regions.ids[0]  # type: ignore[union-attr]
    true = s.regions.get(rid).transition[0]  # type: ignore[union-attr]
    wrong = (true + 1) % digits.num_classes
    s.label(rid, wrong)  # a wrong label: teaching it harms the region's true class
    # every weight: the last layer alone moves too little to harm
    record = s.correct(steps=60, check_every=20, lam=5.0, lr=0.05, update="all")
    assert record.best_step == 0 and "confirm_disputes" in record.stopped
    found = s.disputes()
    assert len(found["rows"]) > 0 and set(found["labels"].tolist()) == {wrong}
    labels = s.training_labels()
    harmed = {digits.classes.index(name) for name in found["classes"]}
    assert set(labels[found["rows"]].tolist()) <= harmed
    # the true labels settle nothing: every disputed image is what its label says
    truth = s.confirm_disputes(lambda images: labels[found["rows"]], who="truth")
    assert truth["disputed"] == found["rows"].tolist()
    assert truth["confirmed"] == [] and truth["disagreed"] == truth["candidates"]
    assert not s.relabels
    # a labeler that agrees with the round relabels exactly the disputed images
    agree = s.confirm_disputes(lambda images: torch.full((len(images),), wrong), who="agree")
    assert sorted(agree["confirmed"]) == sorted(found["rows"].tolist())
    assert {r.new_label for r in s.relabels.values()} == {wrong}
    s.revert(relabels=True)
    assert not s.relabels
    with pytest.raises(RuntimeError, match="a revert or a load changed them"):
        s.disputes()  # the check was made against weights no longer live


def test_a_kept_round_names_the_images_it_moved_to_a_regions_label(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    label = label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    record = s.correct(steps=40, check_every=10, lam=3.0, lr=0.02, early_stopping=False)
    assert record.best_step != 0
    found = s.disputes()
    stored = s.training_labels()[found["rows"]]
    assert (
        len(stored) > 0 and set(found["labels"].tolist()) == {label} and not (stored == label).any()
    )
    assert digits.classes[label] not in found["classes"]
    # right before the round and moved by it: the clean labels say these are its mistakes
    out = s.confirm_disputes(lambda images: stored, who="truth")
    assert out["confirmed"] == [] and out["candidates"] == len(found["rows"])
