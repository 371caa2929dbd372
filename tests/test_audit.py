"""Audit of the training data through failure regions, relabels, their persistence and their use.

One small identify + distill run (module fixture, saved once) feeds every session test; each test
loads its own session from that directory over a copy of the shared classifier.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from torch import nn

import defuse_widgets as dw
import defuse_widgets.correction.round as round_plan
from defuse_widgets.regions.audit import select_conflicts
from defuse_widgets.regions.membership import within_ellipsoid as within_region
from defuse_widgets.regions.relabels import Relabel, apply_relabels, validate_records


@pytest.fixture(scope="module")
def saved(digits, digits_classifier, digits_vae, tmp_path_factory) -> Path:
    s = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                         seed=0, progress=False)  # fmt: skip
    s.identify(strategy="reference", limit=80, samples=30, max_per_image=3)
    s.distill(max_regions=6)
    return s.save(tmp_path_factory.mktemp("audit") / "session")


@pytest.fixture
def s(saved, digits, digits_classifier, digits_vae) -> dw.DefuseSession:
    return dw.DefuseSession.load(saved, copy.deepcopy(digits_classifier), digits_vae, data=digits,
                                 device="cpu")  # fmt: skip


def labeled_region(s: dw.DefuseSession) -> tuple[int, int]:
    """The region whose (true-class) label conflicts with the most training images; labeled."""
    assert s.regions is not None
    best = None
    for region in s.regions:
        s.label(region.id, region.transition[0])
        n = len(s.audit(region.id, coverage=None))
        if best is None or n > best[2]:
            best = (region.id, region.transition[0], n)
        s.unlabel(region.id)
    assert best is not None and best[2] > 0
    s.label(best[0], best[1])
    return best[0], best[1]


# ----- the pure selection -----


def test_select_conflicts_threshold_label_and_order():
    prob = torch.tensor([0.9, 0.5, 0.49, 0.7, 0.7, 1.0, 0.2, 0.6])
    labels = torch.tensor([1, 1, 1, 3, 1, 3, 1, 1])
    idx, p, inside = select_conflicts(prob, labels, region_label=3, min_probability=0.5)
    # inside: rows 0, 1, 3, 4, 5, 7 (0.5 counts, 0.49 does not); conflicts drop label-3 rows 3, 5
    assert inside == 6
    assert idx.tolist() == [0, 4, 7, 1]  # probability descending
    assert p.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    prob[4] = 0.9  # a tie with row 0 is broken by index
    idx, _, _ = select_conflicts(prob, labels, 3, 0.5)
    assert idx.tolist() == [0, 4, 7, 1]
    idx, _, inside = select_conflicts(prob, labels, 3, 0.95)
    assert idx.tolist() == [] and inside == 1


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_select_conflicts_refuses_bad_probability(bad):
    with pytest.raises(ValueError, match="min_probability"):
        select_conflicts(torch.ones(3), torch.zeros(3, dtype=torch.long), 1, bad)


def test_within_region_is_the_chi_square_ellipsoid():
    mean, cov = torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0]))
    codes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [3.1, 0.0], [0.0, 6.2]])
    # chi-square(2) 0.99 quantile is 9.21: radius 3.03 along x, 6.07 along y
    assert within_region(codes, mean, cov, 0.99).tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="coverage"):
        within_region(codes, mean, cov, 1.0)


def test_apply_relabels_copies():
    y = torch.tensor([0, 1, 2, 3])
    out = apply_relabels(y, [Relabel(1, 1, 5, "me", "2026-01-01T00:00:00+00:00")])
    assert out.tolist() == [0, 5, 2, 3] and y.tolist() == [0, 1, 2, 3]


# ----- audit through the session -----


def test_audit_selects_conflicting_training_images_the_region_reaches(s, digits):
    rid, label = labeled_region(s)
    column = [r.id for r in s.regions].index(rid)
    prob = s.region_probability("train")[:, column]
    assert prob.shape == (len(digits.y_train),)
    reached = s.reach("train", [rid]).mask(rid)
    result = s.audit(rid)  # the reach rule alone
    expected = (reached & (digits.y_train != label)).nonzero().flatten()
    assert len(expected) and sorted(result.indices.tolist()) == expected.tolist()
    assert result.inside == int(reached.sum())
    narrowed = s.audit(rid, min_probability=0.5, coverage=None)  # and the mixture's probability
    expected = (reached & (prob >= 0.5) & (digits.y_train != label)).nonzero().flatten()
    assert sorted(narrowed.indices.tolist()) == expected.tolist()
    assert (narrowed.probabilities >= 0.5).all()
    assert result.region_id == rid and result.region_label == label
    assert (result.labels != label).all() and torch.equal(
        result.labels, digits.y_train[result.indices]
    )
    assert len(result.evidence) == len(result)  # likeliest mistakes first
    assert (result.evidence[:-1] >= result.evidence[1:]).all()
    doubt = 1 - s.predict(result.images).gather(1, result.labels[:, None]).squeeze(1)
    assert torch.allclose(result.evidence, doubt)
    assert torch.equal(result.images, digits.x_train[result.indices])
    assert torch.equal(result.predictions, s.predict(result.images).argmax(1))
    rows = result.rows()
    assert len(rows) == len(result) and set(rows[0]) == {
        "index",
        "label",
        "prediction",
        "probability",
    }
    # a stricter threshold selects a subset; the ellipsoid gate (default) too
    strict = s.audit(rid, min_probability=0.99, coverage=None)
    assert set(strict.indices.tolist()) <= set(result.indices.tolist())
    gated = s.audit(rid)
    assert set(gated.indices.tolist()) <= set(result.indices.tolist())


def test_audit_needs_a_class_label(s):
    rid = s.regions.ids[0]
    with pytest.raises(ValueError, match="no label"):
        s.audit(rid)
    s.label(rid, dw.UNRECOGNIZABLE)
    with pytest.raises(ValueError, match="unrecognizable"):
        s.audit(rid)
    assert s.audit(rid, label=2, coverage=None).region_label == 2  # an explicit class works
    with pytest.raises(KeyError, match="region_id"):
        s.audit(999)
    with pytest.raises(ValueError, match="min_probability"):
        s.audit(rid, min_probability=2, label=2)


def test_audit_summary_counts(s):
    rid, label = labeled_region(s)
    summary = s.audit_summary(coverage=None)
    assert list(summary) == [rid]
    row = summary[rid]
    assert row["label"] == label
    assert row["conflicts"] == len(s.audit(rid, coverage=None)) <= row["inside"]
    assert row["relabeled"] == 0
    s.relabel(s.audit(rid, coverage=None).indices[:2], label)
    after = s.audit_summary(coverage=None)[rid]
    assert after["relabeled"] == 2 and after["conflicts"] == row["conflicts"] - 2


def test_split_codes_are_cached_per_generator(s, digits_vae):
    codes = s.split_codes("train")
    assert s.split_codes("train") is codes
    s.generator = dw.as_generator(digits_vae)  # a new generator object: the cache is stale
    fresh = s.split_codes("train")
    assert fresh is not codes and torch.allclose(fresh, codes)


# ----- relabel and undo -----


def test_relabel_and_unrelabel(s, digits):
    y_before = digits.y_train.clone()
    idx = [3, 10, 10, 42]
    targets = {i: (int(digits.y_train[i]) + 1) % 10 for i in (3, 10, 42)}
    assert s.relabel(idx, targets[3], who="ann") == 3 - (int(digits.y_train[10]) == targets[3])
    records = s.relabels
    for i, rec in records.items():
        assert rec.index == i and rec.old_label == int(digits.y_train[i])
        assert rec.new_label == targets[3] and rec.who == "ann"
        assert datetime.fromisoformat(rec.when).tzinfo is not None
    labels = s.training_labels()
    assert all(int(labels[i]) == targets[3] for i in records)
    assert torch.equal(digits.y_train, y_before)  # the dataset is never changed
    records[3] = None  # the property is a copy
    assert s.relabels[3] is not None
    assert s.relabel([3], targets[3]) == 0  # no change
    assert s.relabel([3], int(digits.y_train[3])) == 1  # back to the dataset's label: undone
    assert 3 not in s.relabels
    assert s.unrelabel([10, 42, 5]) == len([i for i in (10, 42) if i in records])
    assert s.relabels == {} and torch.equal(s.training_labels(), digits.y_train)


@pytest.mark.parametrize(
    ("indices", "label", "match"),
    [([10_000], 1, "indices"), ([-1], 1, "indices"), ([0.5], 1, "indices"), ([1], 10, "label"),
     ([1], dw.MODEL_IS_RIGHT, "label"), ([1], dw.UNRECOGNIZABLE, "label")],
)  # fmt: skip
def test_relabel_refuses_bad_input_without_change(s, indices, label, match):
    s.relabel([0], (int(s.data.y_train[0]) + 1) % 10)
    before = s.relabels
    with pytest.raises(ValueError, match=match):
        s.relabel([2, *indices], label)
    assert s.relabels == before


def test_relabeled_images_leave_the_audit(s):
    rid, label = labeled_region(s)
    first = s.audit(rid, coverage=None)
    s.relabel(first.indices[:3], label)
    second = s.audit(rid, coverage=None)
    assert set(second.indices.tolist()) == set(first.indices[3:].tolist())
    s.unrelabel(first.indices[:1])
    assert len(s.audit(rid, coverage=None)) == len(first) - 2


# ----- per-image labeling -----


class Lookup(nn.Module):
    """Logits keyed by an image's first pixel: a stand-in reference model."""

    def __init__(self, table: dict[float, torch.Tensor]):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[round(float(v), 3)] for v in x.flatten(1)[:, 0]])


def test_reference_labeler_per_image_abstains_when_unsure():
    sure = torch.full((10,), -5.0)
    sure[4] = 5.0  # softmax ~ 0.9995 for class 4
    unsure = torch.zeros(10)
    unsure[7] = 1.0  # softmax ~ 0.23 for class 7
    labeler = dw.ReferenceModelLabeler(Lookup({0.1: sure, 0.2: unsure}), min_confidence=0.9)
    images = torch.zeros(3, 1, 8, 8)
    images[:, 0, 0, 0] = torch.tensor([0.1, 0.2, 0.1])
    assert labeler.label_images(images).tolist() == [4, dw.UNRECOGNIZABLE, 4]
    lenient = dw.ReferenceModelLabeler(Lookup({0.1: sure, 0.2: unsure}), min_confidence=0.2)
    assert lenient.label_images(images).tolist() == [4, 7, 4]
    with pytest.raises(ValueError, match="min_confidence"):
        dw.ReferenceModelLabeler(Lookup({}), min_confidence=0)


def test_confirm_audit_relabels_only_what_the_labeler_confirms(s):
    rid, label = labeled_region(s)
    result = s.audit(rid)
    assert len(result) >= 3
    other = (label + 1) % 10
    votes = torch.tensor([[label, dw.UNRECOGNIZABLE, other][i % 3] for i in range(len(result))])
    seen = []

    def person(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return votes

    out = s.confirm_audit(rid, person, who="ann")
    assert torch.equal(seen[0], result.images)
    assert out["confirmed"] == result.indices[votes == label].tolist()
    assert out["candidates"] == len(result)
    assert out["abstained"] == int((votes == dw.UNRECOGNIZABLE).sum())
    assert out["disagreed"] == int((votes == other).sum())
    assert set(s.relabels) == set(out["confirmed"])
    assert {r.who for r in s.relabels.values()} == {"ann"}
    assert {r.new_label for r in s.relabels.values()} == {label}


def test_confirm_audit_with_an_abstaining_reference_labeler(s):
    rid, _ = labeled_region(s)
    never_sure = dw.ReferenceModelLabeler(Lookup({}), min_confidence=1.0)
    never_sure.probabilities = lambda images: torch.full((len(images), 10), 0.1)  # type: ignore[method-assign]
    out = s.confirm_audit(rid, never_sure, coverage=None)
    assert out["confirmed"] == [] and out["abstained"] == out["candidates"] > 0
    assert s.relabels == {}
    with pytest.raises(TypeError, match="labeler"):
        s.confirm_audit(rid, object())
    with pytest.raises(ValueError, match="labeler"):
        s.confirm_audit(rid, lambda images: torch.zeros(1), coverage=None)


# ----- persistence, export and import -----


def relabel_some(s: dw.DefuseSession) -> dict[int, Relabel]:
    y = s.data.y_train
    s.relabel([1, 2], (int(y[1]) + 1) % 10, who="ann")
    s.relabel([30], (int(y[30]) + 3) % 10, who="bob, with a comma")
    return s.relabels


def test_relabels_survive_save_and_load(s, tmp_path, digits, digits_classifier, digits_vae):
    records = relabel_some(s)
    s.save(tmp_path / "s")
    loaded = dw.DefuseSession.load(tmp_path / "s", copy.deepcopy(digits_classifier), digits_vae,
                                   data=digits, device="cpu")  # fmt: skip
    assert loaded.relabels == records
    assert torch.equal(loaded.training_labels(), s.training_labels())
    # a version-1 file written before relabels existed loads with none
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    del doc["relabels"]
    (tmp_path / "s" / "session.json").write_text(json.dumps(doc))
    old = dw.DefuseSession.load(tmp_path / "s", copy.deepcopy(digits_classifier), digits_vae,
                                data=digits, device="cpu")  # fmt: skip
    assert old.relabels == {}


@pytest.mark.parametrize("damage", ["old_label", "index", "not_a_list"])
def test_load_refuses_damaged_relabels(s, tmp_path, damage, digits, digits_classifier, digits_vae):
    relabel_some(s)
    s.save(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    if damage == "not_a_list":
        doc["relabels"] = {"1": 2}
    else:
        doc["relabels"][0][damage] = (
            99_999 if damage == "index" else (doc["relabels"][0]["old_label"] + 1) % 10
        )
    (tmp_path / "s" / "session.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a loadable defuse-widgets session.*relabels"):
        dw.DefuseSession.load(tmp_path / "s", copy.deepcopy(digits_classifier), digits_vae,
                              data=digits, device="cpu")  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_export_import_round_trip(s, tmp_path, suffix):
    records = relabel_some(s)
    path = tmp_path / f"relabels{suffix}"
    doc = s.export_relabels(path)
    assert doc["format"] == "defuse-widgets-relabels" and len(doc["relabels"]) == 3
    if suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
        assert list(rows[0]) == ["index", "old_label", "new_label", "who", "when"]
        assert [int(r["index"]) for r in rows] == sorted(records)
    else:
        assert json.loads(path.read_text()) == doc
    s.unrelabel(list(records))
    assert s.import_relabels(path) == 3
    assert s.relabels == records
    s.unrelabel([1])
    assert s.import_relabels(doc) == 3 and s.relabels == records  # a dict works too


def test_import_replaces_or_merges(s, tmp_path):
    relabel_some(s)
    path = tmp_path / "r.json"
    s.export_relabels(path)
    s.unrelabel([1, 2, 30])
    s.relabel([50], (int(s.data.y_train[50]) + 1) % 10)
    assert s.import_relabels(path, replace=False) == 4
    assert s.import_relabels(path) == 3 and 50 not in s.relabels


def test_export_format_argument(s, tmp_path):
    relabel_some(s)
    s.export_relabels(tmp_path / "r.txt", format="csv")
    assert (tmp_path / "r.txt").read_text().startswith("index,old_label,new_label,who,when")
    s.unrelabel([1, 2, 30])
    assert s.import_relabels(tmp_path / "r.txt") == 3  # sniffed as CSV
    with pytest.raises(ValueError, match="format"):
        s.export_relabels(tmp_path / "r.x", format="xml")


def _csv(rows: list[list[object]], header: str = "index,old_label,new_label,who,when") -> str:
    return "\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("index;old;new\n1;2;3\n", "header"),
        (_csv([[1, "WRONG", 3, "a", "2026-01-01"]]), "old_label .* differs"),
        (_csv([[99_999, 0, 3, "a", "2026-01-01"]]), "outside the training set"),
        (_csv([[1, "OLD", 10, "a", "2026-01-01"]]), "new_label"),
        (_csv([[1, "OLD", -2, "a", "2026-01-01"]]), "new_label"),
        (_csv([[1, "OLD", "x", "a", "2026-01-01"]]), "integers"),
        (_csv([[1, "OLD", 3, "a", "yesterday"]]), "ISO 8601"),
        (_csv([[1, "OLD", 3, "a", "2026-01-01"], [1, "OLD", 4, "b", "2026-01-01"]]), "twice"),
        ('{"format": "something-else", "relabels": []}', "export_relabels"),
        ('{"format": "defuse-widgets-relabels", "relabels": [', "not valid JSON"),
    ],
)
def test_import_refuses_bad_files_without_change(s, tmp_path, text, match):
    records = relabel_some(s)
    y1 = int(s.data.y_train[1])
    text = text.replace("WRONG", str((y1 + 1) % 10)).replace("OLD", str(y1))
    path = tmp_path / ("bad.json" if text.startswith("{") else "bad.csv")
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        s.import_relabels(path)
    assert s.relabels == records
    with pytest.raises(ValueError, match="cannot read"):
        s.import_relabels(tmp_path / "missing.csv")


def test_validate_records_drops_no_op_rows():
    y = torch.tensor([0, 1, 2])
    out = validate_records(
        [{"index": 1, "old_label": 1, "new_label": 1, "who": "a", "when": "2026-01-01T00:00:00"},
         {"index": "2", "old_label": "2", "new_label": "0", "who": "a", "when": "2026-01-01"}], y, 3
    )  # fmt: skip
    assert list(out) == [2] and out[2].new_label == 0


# ----- correction uses the relabels -----


def test_correct_trains_on_relabeled_labels_and_leaves_the_data(s, monkeypatch, digits):
    rid, label = labeled_region(s)
    flip = s.audit(rid, coverage=None).indices[:5]
    s.relabel(flip, label, who="ann")
    y_before = digits.y_train.clone()
    seen = {}
    real = round_plan.fine_tune

    def spy(model, x_train, y_train, *args, **kwargs):
        seen["x"], seen["y"] = x_train, y_train.clone()
        return real(model, x_train, y_train, *args, **kwargs)

    monkeypatch.setattr(round_plan, "fine_tune", spy)
    record = s.correct(steps=3, batch_size=16)
    assert record.relabels == len(flip)
    assert s.validation is not None
    rows = s.validation.fit_rows  # the round never trains on the validation rows
    assert torch.equal(seen["x"], digits.x_train[rows])
    assert torch.equal(seen["y"], s.training_labels()[rows])
    relabeled = torch.isin(rows, flip)
    assert (seen["y"][relabeled] == label).all()
    changed = rows[(seen["y"] != y_before[rows]).nonzero().flatten()]
    assert sorted(changed.tolist()) == sorted(set(flip.tolist()) & set(rows.tolist()))
    assert torch.equal(digits.y_train, y_before) and s.data is digits
    # without relabels, the dataset's labels as before
    s.unrelabel(flip)
    s.correct(steps=2, batch_size=16)
    assert torch.equal(seen["y"], digits.y_train[rows])


# ----- the headless pipeline's --audit flag -----


class NearestNeighbour(nn.Module):
    """A reference model that gives each image the label of its nearest training image."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.register_buffer("x", x.flatten(1))
        self.register_buffer("y", y)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(images.flatten(1), self.x).argmin(1)
        return 20.0 * nn.functional.one_hot(self.y[nearest], 10).float() - 10.0


def test_pipeline_audit_reference_reports_relabels(
    tmp_path, monkeypatch, digits, digits_classifier, digits_vae
):
    import defuse_widgets.cli as cli

    # the user's data: every third training label is wrong; the reference knows the clean ones
    planted = digits.y_train.clone()
    planted[::3] = (planted[::3] + 1) % 10
    user_data = dataclasses.replace(digits, y_train=planted)
    monkeypatch.setattr(cli, "load_dataset", lambda *args, **kwargs: user_data)
    reference = NearestNeighbour(digits.x_train, digits.y_train)
    models = {"classifier": copy.deepcopy(digits_classifier), "vae": digits_vae,
              "reference": reference}  # fmt: skip
    monkeypatch.setattr(cli, "demo_models", lambda *args, **kwargs: models)
    identify = dw.DefuseSession.identify

    def small_identify(self, *args, **kwargs):
        kwargs.update(limit=120, samples=30, max_per_image=3)
        return identify(self, *args, **kwargs)

    monkeypatch.setattr(dw.DefuseSession, "identify", small_identify)

    def label_true_class(self, labeler, overwrite=False):  # a person labels every region
        for region in self.regions:
            self.label(region.id, region.transition[0])
        return self.labels

    monkeypatch.setattr(dw.DefuseSession, "auto_label", label_true_class)
    confirmed: dict[int, list[int]] = {}
    confirm = dw.DefuseSession.confirm_audit

    def spy(self, region_id, labeler, *args, **kwargs):
        out = confirm(self, region_id, labeler, *args, **kwargs)
        confirmed[region_id] = out["confirmed"]
        return out

    monkeypatch.setattr(dw.DefuseSession, "confirm_audit", spy)
    report = cli.run_pipeline("digits", tmp_path, strategy="gaussian", steps=3, max_regions=5,
                              progress=False, audit="reference")  # fmt: skip
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["relabels"] == report["relabels"]
    relabels = report["relabels"]
    assert relabels["audit"] == "reference"
    labeled = {
        str(r["id"]) for r in report["regions"] if r["label"] is not None and r["label"] >= 0
    }
    assert labeled and set(relabels["per_region"]) == labeled == {str(k) for k in confirmed}
    assert relabels["per_region"] == {str(k): len(v) for k, v in confirmed.items()}
    assert relabels["count"] == len({i for v in confirmed.values() for i in v}) > 0
    loaded = dw.DefuseSession.load(tmp_path / "session", copy.deepcopy(digits_classifier),
                                   digits_vae, data=user_data, device="cpu")  # fmt: skip
    assert len(loaded.relabels) == relabels["count"]
    fixed = torch.tensor(list(loaded.relabels))
    assert torch.equal(loaded.training_labels()[fixed], digits.y_train[fixed])
    with pytest.raises(ValueError, match="audit"):
        cli.run_pipeline("digits", tmp_path, audit="everything")
    with pytest.raises(SystemExit):
        cli.main(["run", "--out", str(tmp_path), "--audit", "everything"])


def test_the_labeler_walks_down_the_ranking_and_stops_after_misses_in_a_row() -> None:
    from defuse_widgets.regions.audit import looked_at, walk_down

    confirmed = torch.tensor([True, False, True, False, False, True])
    assert walk_down(confirmed, None).tolist() == confirmed.tolist()
    assert walk_down(confirmed, 2).tolist() == [True, False, True, False, False, False]
    assert looked_at(confirmed, 2, 6) == 5 and looked_at(confirmed, 3, 6) == 6
    with pytest.raises(ValueError, match="stop_after: expected a positive integer"):
        walk_down(confirmed, 0)


def test_session_reach_is_the_membership_rule_cached(s, digits):
    from defuse_widgets.regions.membership import reach

    found = s.reach()
    assert found.total == len(digits.y_train) and set(found.rows) == set(s.regions.ids)
    expected = reach(s.regions, s.errors.source_index, s.split_codes(s.errors.split),
                     s.split_codes("train"))  # fmt: skip
    assert found.counts() == expected.counts() and sum(found.counts().values()) > 0
    assert s._membership["reach:train"] is s._membership["reach:train"]  # cached
    rid = s.regions.ids[0]
    assert torch.equal(s.reach("train", [rid]).rows[rid], found.rows[rid])
    assert s.reach("validation").total == len(s.validation_data()[1])
    with pytest.raises(ValueError, match="split"):
        s.reach("test")
    with pytest.raises(KeyError, match="region_id"):
        s.reach("train", [999])
