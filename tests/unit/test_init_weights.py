"""Fine-tuning from an exported model (`--init-model`): the weights of the torch.export program go
into a fresh ADCNet when classes and width match (so the run starts exactly where the exported
model is), and otherwise the run trains from scratch and prints why."""

from __future__ import annotations

import io
import json

import fsspec
import pytest
import torch

from configs.errors import NotFoundError
from data.artifacts import ArtifactStore
from data.model_format import MODEL_FILE
from data.preprocess import normalize
from data.schema import DEFECT_CLASSES
from tests.serve_fixtures import export_tiny_model, synth_pixels
from train_jobs.export import publish_model
from train_jobs.init_weights import load_init_weights
from train_jobs.model import ADCNet


def _exported_outputs(uri: str, x: torch.Tensor) -> torch.Tensor:
    with fsspec.open(f"{uri}/{MODEL_FILE}", "rb") as f:
        program = torch.export.load(io.BytesIO(f.read()))
    with torch.inference_mode():
        return program.module()(x)


def _batch() -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(normalize(np.stack([synth_pixels(i) for i in range(6)])))


def test_the_fine_tuned_start_answers_as_the_exported_model(tmp_path, capsys):
    uri, meta = export_tiny_model(tmp_path / "m", "1", seed=3, width=4)
    init = load_init_weights(uri, list(DEFECT_CLASSES), width=4)
    assert init.used and init.model_id == "adc-test@1"
    init.report()
    out = capsys.readouterr().out
    assert "fine-tuning from adc-test@1" in out and "ADCP_WARNING" not in out
    assert init.lineage() == {"parent_model": "adc-test@1",
                              "init_model": {"model": "adc-test@1", "used": True, "why": init.why}}

    # what a training worker does with it before its first step
    model = ADCNet(len(DEFECT_CLASSES), in_channels=1, width=4)
    model.load_state_dict(init.state)
    x = _batch()
    with torch.inference_mode():
        mine = model.eval()(x)
    assert torch.allclose(mine, _exported_outputs(uri, x), atol=1e-5)
    fresh = ADCNet(len(DEFECT_CLASSES), in_channels=1, width=4).eval()
    with torch.inference_mode():
        assert not torch.allclose(fresh(x), mine, atol=1e-3)  # the weights did change the start


def test_a_model_artifact_manifest_url_works_as_the_folder_does(tmp_path):
    uri, meta = export_tiny_model(tmp_path / "m", "2", seed=1, width=4)
    store = ArtifactStore(tmp_path / "store")
    _, manifest_url = publish_model(store.url, uri, meta)
    init = load_init_weights(manifest_url, list(DEFECT_CLASSES), width=4)
    assert init.used
    x = _batch()
    model = ADCNet(len(DEFECT_CLASSES), width=4)
    model.load_state_dict(init.state)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), _exported_outputs(uri, x), atol=1e-5)


def test_other_classes_train_from_scratch_and_say_why(tmp_path, capsys):
    uri, _ = export_tiny_model(tmp_path / "m", "1", width=4)
    classes = [*DEFECT_CLASSES, "crack"]
    init = load_init_weights(uri, classes, width=4)
    assert not init.used and init.state is None and "classes" in init.why and "crack" in init.why
    init.report()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("init model: adc-test@1 not used, training from scratch: it was trained for classes")
    warning = json.loads(lines[1].removeprefix("ADCP_WARNING "))
    assert warning["code"] == "init_model_unused" and warning["model"] == "adc-test@1"
    assert init.lineage() == {"init_model": {"model": "adc-test@1", "used": False, "why": init.why}}

    reordered = load_init_weights(uri, list(reversed(DEFECT_CLASSES)), width=4)
    assert not reordered.used  # the same classes in another order would swap the head's rows


def test_another_width_trains_from_scratch(tmp_path):
    uri, _ = export_tiny_model(tmp_path / "m", "1", width=4)
    init = load_init_weights(uri, list(DEFECT_CLASSES), width=16)
    assert not init.used and init.why == "it has width 4, this run has width 16"


def test_no_model_there_is_an_error_not_a_silent_scratch(tmp_path):
    with pytest.raises(NotFoundError, match="No model at"):
        load_init_weights((tmp_path / "nothing").as_posix(), list(DEFECT_CLASSES), width=4)
