"""The shape of a saved session's ``session.json``, checked field by field before anything is read.

:func:`check_document` names the first field that is missing or of the wrong type, so an edited
or damaged file gets "field 'seed': expected an integer, got 'abc'" rather than a Python
internal from deep inside the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from defuse_widgets.utils.atomic import GENERATION

FORMAT = "defuse-widgets-session"
VERSION = 2
READS = (1, 2)  # the format versions this release reads

INT, NUM, STR, BOOL, DICT, LIST, NULL = "int", "num", "str", "bool", "dict", "list", "null"
NAMES = {
    INT: "an integer",
    NUM: "a number",
    STR: "a string",
    BOOL: "true or false",
    DICT: "a mapping",
    LIST: "a list",
    NULL: "null",
}

TOP = {
    "seed": (INT,),
    "dataset": (DICT,),
    "latent_dim": (INT,),
    "snapshots": (INT,),
    "active_round": (INT,),
    "labels": (DICT,),
    "history": (LIST,),
    "errors": (DICT, NULL),
    "regions": (DICT, NULL),
}
DATASET = {"name": (STR,), "n_train": (INT,), "n_test": (INT,)}
ERRORS = {
    "settings": (DICT,),
    "images_searched": (INT,),
    "decodes": (INT,),
    "seconds": (NUM,),
    "split": (STR,),
}
REGIONS = {"settings": (DICT,), "seed": (INT,), "regions": (LIST,)}
REGION = {
    "id": (INT,),
    "weight": (NUM, NULL),
    "size": (INT,),
    "component": (INT,),
    "transition": (LIST,),
    "transition_share": (NUM, NULL),
    "mean_confidence": (NUM, NULL),
    "mean_validity": (NUM, NULL),
    "user_defined": (BOOL,),
}
ROUND = {
    "round": (INT, NULL),
    "cancelled": (BOOL,),
    "settings": (DICT,),
    "losses": (LIST,),
    "seconds": (NUM,),
    "evaluation": (DICT, NULL),
}
ROUND_OPTIONAL = {  # fields added after version 1; absent in older saves
    "base_round": (INT, NULL),
    "relabels": (INT, NULL),
    "stopped": (STR, NULL),
    "best_step": (INT, NULL),
    "checks": (LIST, NULL),
    "validation": (DICT, NULL),
    "scales": (DICT, NULL),
    "min_validity": (NUM, NULL),
    "vetted": (BOOL, NULL),
    "samples_kept": (NUM, NULL),
    "harm": (LIST, NULL),
    "grid": (LIST, NULL),
    "class_deltas": (LIST, NULL),
    "real_images": (DICT, NULL),
    "generated_images": (INT, NULL),
}
EVALUATION = {
    "round": (INT,),
    "test_accuracy": (NUM, NULL),
    "per_class": (LIST,),
    "regions": (DICT,),
}
ACCURACY = {
    "label": (INT,),
    "sample_accuracy": (NUM, NULL),
    "real_images": (INT,),
    "real_hits": (INT,),
    "real_accuracy": (NUM, NULL),
}
FILE = {"name": (STR,), "size": (INT,), "sha256": (STR,)}
FILE_KEYS = ("weights", "errors", "regions")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FieldError(ValueError):
    """A field of session.json is missing or not what the loader needs."""


def kind_of(value: Any) -> str:
    """The JSON kind of ``value`` (``INT``, ``NUM``, ...), an int counting as a number too."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return NUM
    if isinstance(value, str):
        return STR
    return DICT if isinstance(value, Mapping) else LIST if isinstance(value, list) else "other"


def expect(where: str, value: Any, kinds: tuple[str, ...]) -> None:
    """Raise :class:`FieldError` unless ``value`` is one of ``kinds``."""
    kind = kind_of(value)
    if kind in kinds or (kind == INT and NUM in kinds):
        return
    wanted = " or ".join(NAMES[k] for k in kinds)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise FieldError(f"field {where!r}: expected {wanted}, got {shown}")


def check_fields(where: str, doc: Any, spec: Mapping[str, tuple[str, ...]]) -> None:
    """Check that mapping ``doc`` has every field of ``spec`` with one of its kinds."""
    expect(where, doc, (DICT,))
    for key, kinds in spec.items():
        name = f"{where}.{key}" if where else key
        if key not in doc:
            raise FieldError(f"field {name!r} is missing")
        expect(name, doc[key], kinds)


def check_list(where: str, items: list[Any], kinds: tuple[str, ...]) -> None:
    """Check every item of a list."""
    for i, item in enumerate(items):
        expect(f"{where}[{i}]", item, kinds)


def check_document(doc: Mapping[str, Any], version: int) -> None:
    """Check every field the loader reads; raise :class:`FieldError` naming the first bad one."""
    check_fields("", doc, TOP)
    check_seed("seed", doc["seed"])
    check_fields("dataset", doc["dataset"], DATASET)
    expect("validation", doc.get("validation"), (NUM, NULL))
    check_list("labels", list(doc["labels"].values()), (INT,))
    for i, record in enumerate(doc["history"]):
        check_round(f"history[{i}]", record)
    if doc["errors"] is not None:
        check_fields("errors", doc["errors"], ERRORS)
    if doc["regions"] is not None:
        check_fields("regions", doc["regions"], REGIONS)
        check_seed("regions.seed", doc["regions"]["seed"])
        for i, region in enumerate(doc["regions"]["regions"]):
            check_region(f"regions.regions[{i}]", region)
    if doc["regions"] is not None and doc["errors"] is None:
        raise FieldError("it has regions but no errors")
    if version >= 2:
        check_files(doc)


def check_seed(where: str, seed: int) -> None:
    """A seed torch's generators take: a 64-bit signed integer."""
    if not -(2**63) <= seed < 2**63:
        raise FieldError(f"field {where!r}: expected a 64-bit integer seed, got {seed}")


def check_round(where: str, record: Any) -> None:
    """A history entry: a round record with its evaluation."""
    check_fields(where, record, ROUND)
    check_list(f"{where}.losses", record["losses"], (NUM, NULL))
    for key, kinds in ROUND_OPTIONAL.items():
        expect(f"{where}.{key}", record.get(key), kinds)
    expect(f"{where}.labels", record.get("labels", {}), (DICT, NULL))
    check_list(f"{where}.labels", list((record.get("labels") or {}).values()), (INT,))
    evaluation = record["evaluation"]
    if evaluation is not None:
        check_fields(f"{where}.evaluation", evaluation, EVALUATION)
        check_list(f"{where}.evaluation.per_class", evaluation["per_class"], (NUM, NULL))
        for key, accuracy in evaluation["regions"].items():
            check_fields(f"{where}.evaluation.regions.{key}", accuracy, ACCURACY)


def check_region(where: str, region: Any) -> None:
    """A region summary."""
    check_fields(where, region, REGION)
    if len(region["transition"]) != 2:
        raise FieldError(f"field {where + '.transition'!r}: expected [true, predicted] classes")
    check_list(f"{where}.transition", region["transition"], (INT,))


def check_files(doc: Mapping[str, Any]) -> None:
    """A version 2 manifest: ``files`` names each data file with its size and checksum."""
    expect("files", doc.get("files"), (DICT,))
    files = doc["files"]
    needed = {"weights"} | {k for k in ("errors", "regions") if doc[k] is not None}
    if set(files) != needed:
        raise FieldError(f"field 'files': expected entries {sorted(needed)}, got {sorted(files)}")
    for key in FILE_KEYS:
        if key in files:
            check_file(key, files[key])


def check_file(key: str, entry: Any) -> None:
    """One manifest entry: ``<key>.<generation>.safetensors``, its size and sha256."""
    check_fields(f"files.{key}", entry, FILE)
    stem, _, rest = entry["name"].partition(".")
    generation, _, suffix = rest.partition(".")
    if stem != key or not GENERATION.match(generation) or suffix != "safetensors":
        raise FieldError(
            f"field 'files.{key}.name': expected '{key}.<12 hex digits>.safetensors', "
            f"got {entry['name']!r}"
        )
    if not SHA256.match(entry["sha256"]) or entry["size"] < 0:
        raise FieldError(f"field 'files.{key}': expected a size and a sha256 hex digest")
