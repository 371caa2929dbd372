"""The CUDA path (marked ``cuda``, skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them):
identify with every strategy in float32 and bf16 autocast, a correction round, revert
bit-exactness, an interpolator frame."""

from __future__ import annotations

import copy

import pytest
import torch
from session_fixtures import label_true_class, state_equal, weights
from test_identify import SETTINGS, assert_same_errors
from torch import nn

import defuse_widgets as dw
from defuse_widgets.models.inference import predict_proba
from defuse_widgets.search.strategies import STRATEGIES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
N = 60


@pytest.fixture(scope="module")
def gpu_models(digits_classifier: nn.Module, digits_vae: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Copies of the shared models (a session moves its models to its device)."""
    return copy.deepcopy(digits_classifier), copy.deepcopy(digits_vae)


def search(models, data: dw.ImageDataset, strategy: str, **kw) -> dw.ErrorSet:
    clf, vae = models
    options = {**SETTINGS[strategy], "device": "cuda", "progress": False, **kw}
    return dw.identify(clf, vae, data.x_test[:N], data.y_test[:N], strategy, **options)


@pytest.mark.parametrize("autocast", [None, "bf16"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identify_on_cuda(
    strategy: str, autocast: str | None, gpu_models, digits: dw.ImageDataset
) -> None:
    errors = search(gpu_models, digits, strategy, autocast=autocast)
    assert len(errors) > 5 and errors.settings["device"].startswith("cuda")
    assert errors.codes.device.type == "cpu" and errors.codes.dtype == torch.float32
    assert bool((errors.pred_label != errors.true_label).all())
    assert int(errors.source_index.bincount().max()) <= SETTINGS[strategy]["max_per_image"]
    assert bool((errors.source_index.diff() >= 0).all())
    assert bool(((errors.validity > 0) & (errors.validity <= 1)).all())
    # the decodes really are misclassified (in float32, on the GPU)
    clf, vae = gpu_models
    with torch.no_grad():
        pred = clf(vae.decode(errors.codes.cuda())).argmax(1).cpu()
    agree = float((pred == errors.pred_label).float().mean())
    assert agree == 1.0 if autocast is None else agree > 0.9


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_errors_do_not_depend_on_the_chunk_size(
    strategy: str, gpu_models, digits: dw.ImageDataset
) -> None:
    width = STRATEGIES[strategy](**SETTINGS[strategy]).width()
    small = search(gpu_models, digits, strategy, chunk_size=7)
    large = search(gpu_models, digits, strategy, chunk_size=N * width)
    assert_same_errors(small, large)


@pytest.fixture()
def session(gpu_models, digits: dw.ImageDataset) -> dw.DefuseSession:
    clf, vae = gpu_models
    s = dw.DefuseSession(copy.deepcopy(clf), vae, digits, device="cuda", progress=False)
    s.identify(limit=N, samples=30, max_per_image=3)
    s.distill(max_regions=6)
    return s


def test_a_correction_round_and_a_bit_exact_revert_on_cuda(session: dw.DefuseSession) -> None:
    label_true_class(session, 0)
    original = weights(session.classifier)
    assert next(session.classifier.parameters()).device.type == "cuda"
    record = session.correct(steps=4, batch_size=16)
    assert record.round == 1 and not state_equal(weights(session.classifier), original)
    after_1 = weights(session.classifier)
    session.correct(steps=4, batch_size=16)
    session.revert()
    for key, value in session.classifier.state_dict().items():
        assert value.device.type == "cuda" and torch.equal(value.cpu(), original[key]), key
    session.revert(round=1)
    assert state_equal(weights(session.classifier), after_1)


def test_an_interpolator_frame_on_cuda(session: dw.DefuseSession) -> None:
    from defuse_widgets.widgets.interpolator import Interpolator

    widget = Interpolator(session, 0)
    frame = widget.frame_at([0.25])
    assert frame.pixels.dtype.name == "uint8" and frame.pixels.shape == (8, 8, 1)
    assert abs(float(sum(frame.probs)) - 1.0) < 1e-3
    code = widget.code_at([0.25])
    assert code.device.type == "cuda"
    probs = predict_proba(session.classifier, session.decode(code[None]))[0]
    assert frame.prediction == int(probs.argmax())
    assert torch.allclose(torch.from_numpy(frame.probs).float(), probs, atol=1e-4)
    widget.close()
