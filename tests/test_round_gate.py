"""Rounds that change only what they must: group weights, Holm over the classes, and the gate
that chooses a round's step on one half of the validation split and confirms it on the other."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from session_fixtures import flips, label_true_class, ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.correction.evaluation import RoundRecord
from defuse_widgets.correction.round import _FixedParts, group_weights, run_round
from defuse_widgets.correction.samples import Replay
from defuse_widgets.correction.selection import Score, paired_harm
from defuse_widgets.correction.settings import BLENDS, DEFAULTS, RoundSettings
from defuse_widgets.correction.statistics import drop_pvalue, holm, paired_change
from defuse_widgets.correction.training import fine_tune, freeze_all_but_last, snapshot
from defuse_widgets.correction.validation import halves
from defuse_widgets.models.inference import predict_labels


def test_holm_adjusts_each_p_value_by_its_rank_and_keeps_the_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.001]) == pytest.approx([0.2, 0.002])
    assert holm([0.5, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    assert holm([]) == []


@pytest.mark.parametrize("lost, gained", [(5, 0), (4, 0), (9, 2), (8, 2), (14, 5), (3, 1)])
def test_the_drop_p_value_agrees_with_the_interval(lost: int, gained: int) -> None:
    change = paired_change(*flips(300, lost, gained), confidence=0.9)
    assert change.p == pytest.approx(drop_pvalue(lost, gained))
    assert (change.p <= 0.05) == (change.low > 0)  # Clopper-Pearson and the exact test agree
    assert drop_pvalue(0, 0) == 1.0 and drop_pvalue(2, 5) > 0.5


def score(correct: torch.Tensor, labels: torch.Tensor, k: int) -> Score:
    per_class = [float(correct[labels == c].float().mean()) for c in range(k)]
    counts = torch.bincount(labels, minlength=k).tolist()
    return Score(0, float(correct.float().mean()), per_class, 0.5, counts, correct=correct,
                 labels=labels)  # fmt: skip


def test_a_drop_real_for_one_class_alone_is_not_harm_among_ten() -> None:
    k, n = 10, 100
    labels = torch.arange(k).repeat_interleave(n)
    start = torch.ones(k * n, dtype=torch.bool)
    borderline = start.clone()
    borderline[:5] = False  # class 0: 5 of 100 lost, p = 0.031: real alone, not among ten
    assert paired_change(start[:n], borderline[:n]).low > 0
    assert paired_harm(score(start, labels, k), score(borderline, labels, k)) == []
    sure = start.clone()
    sure[:12] = False  # 12 of 100 lost, p = 0.0002: real after Holm too
    harmed = paired_harm(score(start, labels, k), score(sure, labels, k))
    assert [e["class"] for e in harmed] == [0, None]  # and overall: 1.2 points, real
    assert harmed[0]["p"] == pytest.approx(10 * drop_pvalue(12, 0))


def test_halves_are_disjoint_stratified_and_seeded() -> None:
    labels = torch.tensor([0] * 11 + [1] * 6 + [2] * 1)
    choose, confirm = halves(labels, seed=3)
    assert not (choose & confirm).any() and (choose | confirm).all()
    for c, size in ((0, 11), (1, 6), (2, 1)):
        assert int(choose[labels == c].sum()) == (size + 1) // 2
    assert torch.equal(halves(labels, seed=3)[0], choose)
    assert not torch.equal(halves(labels, seed=4)[0], choose)


def test_group_weights_balance_each_region_against_the_rest() -> None:
    members = torch.zeros(10, 2, dtype=torch.bool)
    members[0:2, 0] = True  # region 0: two rows
    members[1:5, 1] = True  # region 1: rows 1-4, row 1 counted in region 0 (its first)
    w = group_weights(members, 0.5)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[0:2].sum()) == pytest.approx(0.25) and float(w[2:5].sum()) == pytest.approx(0.25)
    assert float(w[5:].sum()) == pytest.approx(0.5) and torch.allclose(w[5:], w[5])
    assert torch.allclose(group_weights(torch.zeros(4, 1, dtype=torch.bool), 0.5),
                          torch.full((4,), 0.25))  # fmt: skip


def test_the_interpolation_is_searched_in_fine_steps() -> None:
    assert BLENDS[0] == 0.95 and BLENDS[-1] == 0.05 and len(BLENDS) == 19
    assert all(a > b for a, b in zip(BLENDS, BLENDS[1:]))


def test_the_confirmation_half_refuses_harm_the_choice_never_saw(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    rid = s.regions.ids[0]  # type: ignore[union-attr]
    label_true_class(s, rid)
    inputs = s._round_inputs(s.correctable(), None)
    fixed = _FixedParts.of(inputs, DEFAULTS)
    assert fixed.choose is not None and s.validation is not None
    assert 0 < int(fixed.choose.sum()) < len(s.validation)
    same = snapshot(inputs.classifier)
    record = RoundRecord(None, False, {}, [], 0.0, validation={}, best_step=10, stopped="ran")
    state, refused = fixed.confirm(same, DEFAULTS, record)
    assert refused is None and state is same and "confirmed on" in record.stopped
    half = record.validation["confirm"]  # type: ignore[index]
    assert half["images"] == int((~fixed.choose).sum()) and half["negative_flips"] == 0
    assert {"lost", "p", "p_holm", "low", "high"} <= set(half["changes"][0])
    broken = copy.deepcopy(inputs.classifier)
    with torch.no_grad():  # never predict class 3: harm on every half
        last = [m for m in broken.modules() if isinstance(m, nn.Linear)][-1]
        last.bias[3] -= 1e4
    record = RoundRecord(None, False, {}, [], 0.0, validation={}, best_step=10, stopped="ran")
    state, refused = fixed.confirm(snapshot(broken), DEFAULTS, record)
    assert refused is not None and 3 in refused.harmed
    assert all(torch.equal(state[k], same[k]) for k in same)  # the starting weights
    assert record.best_step == 0 and "refused on the" in record.stopped
    assert record.validation["confirm"]["changes"][3]["lost"] > 0  # type: ignore[index]
    assert record.validation["confirm"]["negative_flips"] > 0  # type: ignore[index]


def test_a_round_that_lowers_the_whole_validation_split_is_refused(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    fixed = _FixedParts.of(s._round_inputs(s.correctable(), None), DEFAULTS)
    start = fixed.inputs.classifier
    assert fixed._net_gain(start) == [0] * 10
    broken = copy.deepcopy(start)
    with torch.no_grad():  # never predict class 3: it loses every 3 it got right
        [m for m in broken.modules() if isinstance(m, nn.Linear)][-1].bias[3] -= 1e4
    x_val, y_val = s.validation_data()
    right = int(((predict_labels(start, x_val) == y_val) & (y_val == 3)).sum())
    assert fixed._net_gain(broken)[3] == -right < 0
    # no class harmed on the confirmation half, but one image fewer right on the whole split
    fixed._net_gain = lambda chosen: [0, 0, 0, -1, 0, 0, 0, 0, 0, 0]  # type: ignore[method-assign]
    record = RoundRecord(None, False, {}, [], 0.0, validation={}, best_step=10, stopped="ran")
    state, refused = fixed.confirm(snapshot(start), DEFAULTS, record)
    assert refused is not None and refused.harmed == (3,) and record.best_step == 0
    assert "1 fewer of the" in record.stopped and "keeps its starting weights" in record.stopped
    confirm = record.validation["confirm"]  # type: ignore[index]
    assert confirm["harm"] == [] and confirm["net"] == -1 and not confirm["confirmed"]


def test_a_round_that_lowers_the_half_it_was_not_chosen_on_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    """The whole split includes the half the step was chosen on: an image lost on the other half
    refuses the round even when the whole split's count is level."""
    from defuse_widgets.correction import round as round_module

    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    fixed = _FixedParts.of(s._round_inputs(s.correctable(), None), DEFAULTS)
    real_changes = round_module.changes

    def one_lost(before: Score, after: Score, confidence: float) -> list[Any]:
        found = real_changes(before, after, confidence)
        found[5] = dataclasses.replace(found[5], lost=found[5].lost + 1)  # class 5 loses one
        return found

    monkeypatch.setattr(round_module, "changes", one_lost)
    fixed._net_gain = lambda chosen: [0] * 10  # type: ignore[method-assign]
    record = RoundRecord(None, False, {}, [], 0.0, validation={}, best_step=10, stopped="ran")
    state, refused = fixed.confirm(snapshot(fixed.inputs.classifier), DEFAULTS, record)
    confirm = record.validation["confirm"]  # type: ignore[index]
    assert confirm["harm"] == [] and confirm["net"] == 0 and confirm["half_net"] == -1
    assert not confirm["confirmed"] and record.best_step == 0
    assert refused is not None and refused.harmed == (5,)
    assert "1 fewer of the 65 validation images it was not chosen on" in record.stopped


def test_a_refused_best_candidate_gives_way_to_the_next_confirmed_one(
    monkeypatch: pytest.MonkeyPatch,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    inputs = s._round_inputs(s.correctable(), None)
    scores = {"last": (0.9, 0.9), "all": (0.5, 0.5)}  # the last layer scores best
    kept = {"last": False, "all": True}  # but its confirmation refuses it

    def train(self: Any, settings: Any, cancel: Any, callback: Any) -> Any:
        return scores[settings.update], {"w": settings.update}, [1.0], None

    def judge(self: Any, settings: Any, state: Any, losses: Any, checker: Any) -> Any:
        record = RoundRecord(None, False, vars(settings), losses, 0.0)
        return record, state, None, kept[settings.update]

    monkeypatch.setattr(_FixedParts, "train", train)
    monkeypatch.setattr(_FixedParts, "judge", judge)
    result = run_round(inputs, [DEFAULTS])  # update="best": the last layer, then every weight
    assert result.record.settings["update"] == "all" and result.state == {"w": "all"}
    assert [g["update"] for g in result.record.grid] == ["last", "all"]
    kept["all"] = False  # none kept: the best-scoring one's record and its starting weights
    assert run_round(inputs, [DEFAULTS]).record.settings["update"] == "last"


def test_a_rounds_real_rows_are_the_reached_rows_that_carry_its_label(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None and s.validation is not None
    rid = s.regions.ids[0]
    rows = s.validation.fit_rows
    reached = s.reach("train", [rid]).mask(rid)[rows]
    labels = s.training_labels()[rows]
    target = int(labels[reached].bincount().argmax())  # the class most of its rows carry
    s.label(rid, target)
    fixed = _FixedParts.of(s._round_inputs(s.correctable(), None), DEFAULTS)
    expected = reached & (labels == target)
    assert 0 < int(expected.sum()) < int(reached.sum())  # rows of other classes stay out
    assert torch.equal(fixed.members[:, 0], expected)
    assert fixed.real_images() == {rid: int(expected.sum())}
    assert fixed.outside is not None and torch.equal(fixed.outside, ~expected)
    y_val = s.validation_data()[1]
    val_expected = s.reach("validation", [rid]).mask(rid) & (y_val == target)
    assert fixed.val_members is not None and torch.equal(fixed.val_members[:, 0], val_expected)
    inputs = dataclasses.replace(fixed.inputs, reached=reached[:5, None])
    with pytest.raises(ValueError, match=r"reached: expected \(\d+, 1\) bool"):
        _FixedParts.of(inputs, DEFAULTS)


def test_a_round_records_its_confirmation(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    record = s.correct(steps=20, check_every=10)
    assert record.validation is not None
    if record.best_step:  # a kept step is always confirmed on the images it was not chosen on
        assert record.validation["confirm"]["confirmed"]
        assert "confirmed on" in record.stopped
    else:
        assert "keeps its starting weights" in record.stopped


def test_a_last_layer_round_changes_only_the_last_linear_layer(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    start = snapshot(s.classifier)
    record = s.correct(steps=20, update="last", early_stopping=False)
    assert record.settings["update"] == "last"
    last = [n for n, m in s.classifier.named_modules() if isinstance(m, nn.Linear)][-1]
    after = snapshot(s.classifier)
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved and all(k.startswith(last + ".") for k in moved)
    with pytest.raises(ValueError, match="update"):
        s.correct(steps=5, update="first")
    with pytest.raises(ValueError, match="nn.Linear"):
        freeze_all_but_last(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("update", ["last", "all"])
def test_a_last_layer_round_keeps_the_batch_norm_statistics(update: str) -> None:
    """The frozen features include their normalization statistics (every weight: they move)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip
    x, y = torch.rand(64, 1, 8, 8) * 3, torch.randint(0, 3, (64,))
    start = snapshot(model)
    state, _ = fine_tune(model, x, y, lambda n: (x[:0], y[:0]),
                         RoundSettings(steps=5, lr=0.1, update=update, ema=0))  # fmt: skip
    moved = {k.split(".")[0] for k in start if not torch.equal(start[k], state[k])}
    assert moved == ({"4"} if update == "last" else {"0", "1", "4"})
    assert not model.training and torch.equal(snapshot(model)["1.running_mean"],
                                              start["1.running_mean"])  # fmt: skip


def test_a_replayed_stream_gives_each_reader_the_same_batches_decoded_once() -> None:
    calls = []

    def source(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(n)
        return torch.full((n, 1), float(len(calls))), torch.zeros(n, dtype=torch.long)

    replay = Replay(source)
    first, second = replay.reader(), replay.reader()
    a = [first(4)[0][0, 0].item() for _ in range(3)]
    b = [second(4)[0][0, 0].item() for _ in range(5)]
    assert a == [1, 2, 3] and b == [1, 2, 3, 4, 5] and calls == [4] * 5


def test_each_setting_of_a_best_round_trains_as_it_would_alone(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    """update="best" replays one stream of region samples to both settings: each scores as the
    same setting trained in a round of its own."""

    def first_round(update: str) -> RoundRecord:
        s = ready_session(digits_classifier, digits_vae, digits)
        label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
        return s.correct(steps=40, update=update)

    both = first_round("best").grid
    assert both is not None and [g["update"] for g in both] == ["last", "all"]
    for entry in both:
        kept = first_round(entry["update"]).validation["after"]  # type: ignore[index]
        assert (entry["region"], entry["overall"]) == (kept["region"], kept["overall"])
