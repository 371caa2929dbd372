"""A round that cannot quietly break the model: validation split, keep term, sample filters,
early stopping on validation, harm flags, auto grid (issue 15)."""

from __future__ import annotations

import copy

import pytest
import torch
from session_fixtures import label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw
from defuse_widgets.correction.samples import measured_scales, region_batches
from defuse_widgets.correction.selection import EarlyStopping, Score, harm
from defuse_widgets.correction.training import WeightAverage, blended, keep_loss
from defuse_widgets.correction.validation import carve, make_validation
from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions.membership import inside_regions
from defuse_widgets.widgets.explorer import panels


def score(step: int, region: float, per_class: list[float], counts: int = 100) -> Score:
    overall = sum(per_class) / len(per_class)
    return Score(step, overall, per_class, region, [counts] * len(per_class))


# ----- the validation split -----


def test_carved_validation_is_seeded_stratified_and_disjoint(digits: dw.ImageDataset) -> None:
    a, b, other = carve(digits, 0.1, 0), carve(digits, 0.1, 0), carve(digits, 0.1, 1)
    assert a.rows is not None and torch.equal(a.rows, b.rows)
    assert not torch.equal(a.rows, other.rows)
    assert len(a) == round(0.1 * len(digits.y_train))
    assert set(a.rows.tolist()).isdisjoint(a.fit_rows.tolist())
    assert len(a.rows) + len(a.fit_rows) == len(digits.y_train)
    share = torch.bincount(digits.y_train[a.rows], minlength=10) / len(a.rows)
    natural = torch.bincount(digits.y_train, minlength=10) / len(digits.y_train)
    assert (share - natural).abs().max() < 0.02


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, ValueError, r"fraction in \(0, 0.5\]"),
        (0.7, ValueError, r"fraction in \(0, 0.5\]"),
        ("ten", TypeError, "got str"),
        ((torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)), ValueError, "shape"),
        ((torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.long)), ValueError, "3 labels"),
    ],
)
def test_bad_validation_arguments_say_what_was_expected(
    digits: dw.ImageDataset, value: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        make_validation(digits, value, 0)


def test_a_user_validation_pair_trains_on_every_training_image(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    pair = (digits.x_test[:50], digits.y_test[:50])
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                         progress=False, validation=pair)  # fmt: skip
    assert s.validation is not None and s.validation.rows is None
    assert len(s.validation.fit_rows) == len(digits.y_train)
    x, y = s.validation_data()
    assert torch.equal(x, pair[0]) and torch.equal(y, pair[1])
    assert s.split_codes("validation").shape == (50, digits_vae.latent_dim)


def test_without_validation_there_is_no_early_stopping(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                         progress=False, validation=None)  # fmt: skip
    with pytest.raises(RuntimeError, match="no validation split"):
        s.validation_data()
    with pytest.raises(ValueError, match="auto: choosing settings needs a validation split"):
        s.correct(auto=True)


# ----- harm and early stopping -----


def test_harm_names_each_class_past_the_tolerance_and_the_overall_drop() -> None:
    got = harm(0.9, [0.9, 0.8, 0.95], 0.88, [0.92, 0.75, 0.945], 1.0, ("a", "b", "c"))
    assert [h["name"] for h in got] == ["b", "overall"]
    assert got[0]["drop"] == pytest.approx(5.0) and got[1]["drop"] == pytest.approx(2.0)
    assert harm(0.9, [0.9, 0.8], 0.9, [0.9, 0.795], 1.0) == []  # 0.5 point is within 1 point


def test_harm_ignores_a_single_image() -> None:
    # 18 images per class: one image is 5.6 points, two are 11.1
    one, two = 1 / 18, 2 / 18
    assert harm(1.0, [1.0, 1.0], 1.0, [1.0 - one, 1.0], 1.0, counts=[18, 18]) == []
    assert len(harm(1.0, [1.0, 1.0], 1.0, [1.0 - two, 1.0], 1.0, counts=[18, 18])) == 1


class Scripted:
    """A measure that replays scores and a model whose weights record the step."""

    def __init__(self, scores: list[Score]):
        self.scores = iter(scores)

    def __call__(self, model: nn.Module, step: int) -> Score:
        return next(self.scores)


def test_early_stopping_keeps_the_best_acceptable_step_and_says_why() -> None:
    model = nn.Linear(2, 2)
    scores = [
        score(0, 0.2, [0.9, 0.9]),
        score(10, 0.5, [0.9, 0.9]),
        score(20, 0.9, [0.9, 0.7]),  # better regions, but a class lost 20 points: refused
        score(30, 0.6, [0.9, 0.895]),  # acceptable and best
        score(40, 0.55, [0.9, 0.9]),
        score(50, 0.58, [0.9, 0.9]),
        score(60, 0.59, [0.9, 0.9]),
    ]
    stop = EarlyStopping(Scripted(scores), model, tolerance=1.0, patience=3)
    stopped_at = None
    for step in (10, 20, 30, 40, 50, 60):
        with torch.no_grad():
            model.weight.fill_(step)
        if stop.check(step, model):
            stopped_at = step
            break
    assert stopped_at == 60 and stop.best.step == 30
    assert stop.best_state is not None and float(stop.best_state["weight"][0, 0]) == 30
    assert "kept step 30" in stop.finish(60)


def test_early_stopping_keeps_the_start_when_every_step_hurts() -> None:
    scores = [score(0, 0.2, [0.9, 0.9])] + [score(10 * i, 0.9, [0.5, 0.9]) for i in (1, 2, 3)]
    stop = EarlyStopping(Scripted(scores), nn.Linear(2, 2), patience=3)
    assert [stop.check(10 * i, nn.Linear(2, 2)) for i in (1, 2, 3)] == [False, False, True]
    assert stop.best_state is None and "keeps its starting weights" in stop.finish(30)


def test_a_blend_that_passes_is_kept_and_named_without_counting_as_a_step() -> None:
    scores = [score(0, 0.2, [0.9, 0.9]), score(10, 0.9, [0.5, 0.9]), score(10, 0.7, [0.9, 0.9])]
    stop = EarlyStopping(Scripted(scores), nn.Linear(2, 2), patience=1)
    assert stop.check(10, nn.Linear(2, 2))  # the step hurt a class: patience spent
    reason = stop.reason
    assert not stop.check(10, nn.Linear(2, 2), blend=0.5)  # half way back to the start passes
    assert stop.best.blend == 0.5 and stop.best_state is not None
    assert stop.reason == reason and "kept step 10 blended 50%" in stop.finish(10)


def test_the_weight_average_warms_up_then_follows_the_decay() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.15)
    expected = 0.0
    for t, (w, decay) in enumerate(zip((1.0, 2.0, 3.0), (0.1, 0.15, 0.15))):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update(model)
        assert decay == pytest.approx(min(0.15, (1 + t) / (10 + t)))  # warm-up, then the cap
        expected = decay * expected + (1 - decay) * w
        assert float(average.model.weight) == pytest.approx(expected)
    assert not average.model.weight.requires_grad


def test_a_blend_is_the_share_of_the_end_and_the_rest_of_the_start() -> None:
    start, end = nn.Linear(3, 2), nn.Linear(3, 2)
    mid = blended(start, end, 0.25)
    assert torch.allclose(mid.weight, 0.75 * start.weight + 0.25 * end.weight)
    assert torch.allclose(mid.bias, 0.75 * start.bias + 0.25 * end.bias)
    assert torch.equal(blended(start, end, 1.0).weight, end.weight)


# ----- the keep term and the region samples -----


def test_keep_loss_is_zero_for_the_teacher_itself_and_masks_rows() -> None:
    torch.manual_seed(0)
    teacher, x = nn.Linear(4, 3), torch.randn(8, 4)
    assert float(keep_loss(teacher(x), teacher, x, None).detach()) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 3) * 3
    full = keep_loss(other, teacher, x, None)
    none = keep_loss(other, teacher, x, torch.zeros(8, dtype=torch.bool))
    half = keep_loss(other, teacher, x, torch.arange(8) < 4)
    assert float(full) > 0 and float(none) == 0.0 and float(half) > 0


def test_training_draws_stay_inside_the_region_ellipsoid(s: dw.DefuseSession) -> None:
    assert s.regions is not None
    rid = s.regions.ids[0]
    region = s.regions.get(rid)
    draw = s.regions.training_sampler({rid: 0}, 4.0, 0, torch.device("cpu"), coverage=0.9)
    codes = draw(400)[0]
    inside = inside_regions(s.regions, codes, [rid], coverage=0.9)
    from defuse_widgets.regions.mixture import chi_square_quantile, mahalanobis_sq

    limit = chi_square_quantile(0.9, codes.shape[1])
    assert (mahalanobis_sq(codes, region.mean, region.covariance) <= limit + 1e-6).all()
    assert inside.shape == (400, 1)


def test_scales_follow_the_validation_images_inside_a_region(s: dw.DefuseSession) -> None:
    assert s.regions is not None
    rid = s.regions.ids[0]
    region = s.regions.get(rid)
    near = (
        region.mean
        + 0.3
        * torch.randn(40, len(region.mean))
        @ torch.linalg.cholesky(region.covariance.double()).float().T
    )  # real images at 0.3 of the region's spread: a scale of about 0.09
    inside = torch.ones(40, 1, dtype=torch.bool)
    scales = measured_scales(s.regions, {rid: 0}, near, inside)
    assert 0.04 < scales[rid] < 0.2
    assert measured_scales(s.regions, {rid: 0}, near[:3], inside[:3])[rid] == 1.0  # too few


def test_vetted_batches_hold_only_samples_the_labeler_calls_their_label(
    s: dw.DefuseSession,
) -> None:
    assert s.regions is not None
    rid = s.regions.ids[0]
    label = s.correctable()[rid]

    def batches(vet: object = None, tally: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        draw = s.regions.training_sampler({rid: label}, 1.0, 0, torch.device("cpu"))  # type: ignore[union-attr]
        return region_batches(draw, s.generator, 0.0, vet, tally)(200)  # type: ignore[arg-type]

    plain_x, _ = batches()
    cut = float(plain_x.mean((1, 2, 3)).median())

    def vet(x: torch.Tensor) -> torch.Tensor:  # "the label" for the brighter half, else unsure
        return torch.where(x.mean((1, 2, 3)) > cut, label, dw.UNRECOGNIZABLE)

    tally: dict[str, int] = {}
    x, y = batches(vet, tally)
    assert len(y) == 200 and (y == label).all() and (x.mean((1, 2, 3)) > cut).all()
    assert tally["drawn"] >= 400 and tally["kept"] >= 200
    never = batches(lambda x: torch.full((len(x),), dw.UNRECOGNIZABLE))
    assert len(never[1]) == 0  # nothing vetted: no region term, rather than a wrong sample


# ----- a whole round -----


@pytest.fixture()
def s(digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset):
    session = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(session, session.regions.ids[0])  # type: ignore[union-attr]
    return session


def test_a_round_records_why_it_stopped_and_what_it_did_per_class(s: dw.DefuseSession) -> None:
    record = s.correct(steps=40, check_every=10, patience=2)
    assert record.stopped and record.best_step is not None
    assert record.checks[0]["step"] == 0 and all("per_class" in c for c in record.checks)
    assert record.validation is not None
    assert {"before", "after", "changes", "overall_change"} <= set(record.validation)
    if record.best_step:  # its changes are those on the half it was not chosen on
        assert record.validation["changes"] == record.validation["confirm"]["changes"]
    changes = record.validation["changes"]
    assert len(changes) == s.data.num_classes
    assert all(c["low"] <= c["drop"] <= c["high"] for c in changes)
    assert sum(c["images"] for c in changes) == record.validation["overall_change"]["images"]
    assert len(record.class_deltas) == s.data.num_classes
    assert set(record.scales) == set(s.correctable()) and record.min_validity is not None
    if record.best_step == 0:  # the round kept its starting weights
        assert state_equal(weights(s.classifier), s._snapshots[0])
    back = dw.RoundRecord.from_dict(record.to_dict())
    assert back.stopped == record.stopped and back.class_deltas == record.class_deltas


def test_a_vetted_round_says_so_and_a_labeler_that_cannot_vet_is_refused_first(
    s: dw.DefuseSession, digits_classifier: nn.Module
) -> None:
    class RegionsOnly:  # labels regions, but has no per-image mode
        samples = 4

        def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int:
            return 0

    class BrightHalf(RegionsOnly):  # per image: the region's label for bright samples
        def label_images(self, images: torch.Tensor) -> torch.Tensor:
            bright = images.mean((1, 2, 3)) > images.mean((1, 2, 3)).median()
            return torch.where(bright, label, dw.UNRECOGNIZABLE)

    label = next(iter(s.correctable().values()))
    plain = s.correct(steps=10)
    assert not plain.vetted and plain.samples_kept is not None
    record = s.correct(steps=10, labeler=BrightHalf())
    assert record.vetted and record.samples_kept is not None
    assert 0 < record.samples_kept < plain.samples_kept
    back = dw.RoundRecord.from_dict(record.to_dict())
    assert back.vetted and back.samples_kept == record.samples_kept
    assert s.correct(steps=5, labeler=digits_classifier).vetted  # a module: wrapped, per image
    assert panels.samples_note(plain) == ""
    assert panels.samples_note(record) == (
        f"The labeler kept {100 * record.samples_kept:.0f}% of the region samples drawn."
    )

    class Nothing(RegionsOnly):  # rejects every sample: the round is plain extra training
        def label_images(self, images: torch.Tensor) -> torch.Tensor:
            return torch.full((len(images),), dw.UNRECOGNIZABLE)

    rejected = s.correct(steps=5, labeler=Nothing())
    assert rejected.samples_kept == 0
    assert "rejected every region sample" in panels.samples_note(rejected)

    rounds, before = s.rounds, weights(s.classifier)
    for bad, match in (
        ("model", "expected a ReferenceModelLabeler"),
        (RegionsOnly(), "label_images"),
    ):
        with pytest.raises(TypeError, match=match):
            s.correct(steps=10, labeler=bad)
    assert s.rounds == rounds and state_equal(weights(s.classifier), before)


def test_a_harmful_round_is_flagged_with_the_classes_it_hurt(s: dw.DefuseSession) -> None:
    # a reckless round: large steps, no keep term, every step kept
    seen: list[tuple[list, list]] = []  # what a listener (the explorer) finds when told
    s.observe(lambda event: seen.append((s.history[-1].harm, s.history[-1].class_deltas)))
    record = s.correct(steps=60, lr=0.5, keep=0.0, early_stopping=False)
    assert record.harmful and record.harm
    assert seen == [(record.harm, record.class_deltas)]  # the record was whole when told
    assert all(h["drop"] > 1.0 for h in record.harm)
    assert any(h["class"] is None or h["name"] in s.data.classes for h in record.harm)


def test_auto_tries_the_grid_and_keeps_the_best(s: dw.DefuseSession) -> None:
    steps_seen: list[tuple[int, int]] = []
    record = s.correct(steps=10, auto=True, callback=lambda a, b, _: steps_seen.append((a, b)))
    assert len(record.grid) == 8  # each setting with the last layer, then with every weight
    assert [g["update"] for g in record.grid] == ["last", "all"] * 4
    ranked = sorted(record.grid, key=lambda g: (g["region"], g["overall"]), reverse=True)
    chosen = {k: record.settings[k] for k in ("lam", "lr", "update")}
    picks = [{k: g[k] for k in chosen} for g in ranked]
    # the best by validation, or when its confirmation refused it, the next best confirmed one
    assert chosen == picks[0] if not record.best_step else chosen in picks
    assert steps_seen[-1][1] == 80 and all(b == 80 for _, b in steps_seen)


def test_a_saved_session_keeps_its_validation_fraction(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset, tmp_path
) -> None:
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                         progress=False, validation=0.2)  # fmt: skip
    s.save(tmp_path / "s")
    back = dw.DefuseSession.load(tmp_path / "s", copy.deepcopy(digits_classifier), digits_vae,
                                 digits, device="cpu")  # fmt: skip
    assert back.validation is not None and back.validation.fraction == 0.2
    assert s.validation is not None and torch.equal(back.validation.rows, s.validation.rows)


def test_evaluate_reports_the_validation_split_per_class(s: dw.DefuseSession) -> None:
    val, test = s.evaluate(split="validation"), s.evaluate()
    assert len(val.per_class) == len(test.per_class) == s.data.num_classes
    assert s.validation is not None and val.regions.keys() == test.regions.keys()
    x, y = s.validation_data()
    pred = predict_labels(s.classifier, x)
    assert val.test_accuracy == pytest.approx(float((pred == y).float().mean()))
    with pytest.raises(ValueError, match=r"split: expected one of \('test', 'validation'\)"):
        s.evaluate(split="train")


def test_a_round_runs_with_a_generator_made_of_plain_functions(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    vae = copy.deepcopy(digits_vae)
    gen = dw.as_generator(encode=vae.encode, decode=vae.decode)  # no modules given
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), gen, digits, device="cpu",
                         progress=False)  # fmt: skip
    s.identify(limit=40, samples=20, max_per_image=3)
    s.distill(max_regions=4)
    label_true_class(s, s.regions.ids[0])  # type: ignore[union-attr]
    record = s.correct(steps=10)
    assert record.round == 1 and record.min_validity is not None
