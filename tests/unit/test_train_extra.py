"""Training on the base dataset plus extra datasets (a line's reviewed images with their verdict
labels): the images are decoded whatever their format and size, each image's own split decides
where it goes (a test image is never trained on), the classes are the union of the labels present,
the job's flags pair datasets with annotations, and the coordinator ships the extras and the init
model with the base dataset and names them on the job's command line."""

from __future__ import annotations

import hashlib
import io
import shlex

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from configs.errors import ConfigError, InputError
from configs.loader import load_defaults
from configs.models import SynthConfig
from configs.protocol import entrypoint
from configs.runs import TERMINAL, RunRequest
from coordinator.jobs import runner
from coordinator.state.jobs import JobRecords
from data.annotations import publish_annotations
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import write_synthetic
from data.image_datasets import ImageRecord, publish_images
from data.schema import split_of
from tests.unit.test_runner import _Central, fakes  # noqa: F401 - the fixture of fake sites
from tests.waiting import wait_for
from train_jobs.pipeline import DecodeAndLabel, run_classes, run_sources, split_arrays
from train_jobs.train import parse_args

FORMATS = ("PNG", "BMP", "TIFF")


def _reviewed(store: ArtifactStore, n: int) -> tuple[str, str, dict[str, str]]:
    """A reviewed-images dataset of `n` images in several formats and sizes, and verdict annotations
    labelling them scratch or a new class `crack`; (dataset URL, annotations URL, id -> label)."""
    rng = np.random.default_rng(5)
    blobs = []
    for i in range(n):
        side = int(rng.integers(24, 96))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side + i % 3), dtype=np.uint8)).save(buf, FORMATS[i % 3])
        blobs.append(buf.getvalue())
    publish_images(store, "reviewed-aoi", (ImageRecord(b, source=str(i)) for i, b in enumerate(blobs)),
                   source={"kind": "review"}, annotator="review-sync")
    ids = [hashlib.sha256(b).hexdigest() for b in blobs]
    labels = {i: ("crack" if k % 2 else "scratch") for k, i in enumerate(ids)}
    publish_annotations(store, "reviewed-aoi", pa.table({"image_id": list(labels), "label": list(labels.values())}),
                        author="review-sync", classes=["crack", "scratch"])
    ann = store.versions("annotations", "reviewed-aoi")[-1]
    return (store.manifest_url(ArtifactRef("dataset", "reviewed-aoi", "1")),
            store.manifest_url(ArtifactRef("annotations", "reviewed-aoi", ann)), labels)


def test_extra_reviewed_images_join_the_base_by_their_own_split(tmp_path):
    base = write_synthetic((tmp_path / "aoi").as_posix(), SynthConfig(images=60, size=64), name="aoi", version="1")
    store = ArtifactStore(tmp_path / "store")
    ds_url, ann_url, labels = _reviewed(store, 90)
    sources = run_sources(base.url, None, [(ds_url, ann_url)])
    assert [s.dataset.dataset_id for s in sources] == ["aoi@1", "reviewed-aoi@1"]
    assert sources[1].annotations == f"reviewed-aoi@{ann_url.rsplit('/', 1)[1].removesuffix('.json')}"
    assert sources[1].labels == labels
    classes = run_classes(sources)
    assert classes == [*base.classes, "crack"]  # the base's order kept, the new class after it

    out = DecodeAndLabel(sources[1].labels, classes, 32)(sources[1].dataset.read_images(["image_id", "image"]))
    assert out["pixels"].shape == (90, 32, 32) and out["pixels"].dtype == np.uint8
    assert list(out["split"]) == [split_of(i) for i in sources[1].dataset.read_images(["image_id"])
                                  .column("image_id").to_pylist()]

    for split in ("train", "val"):
        x, y = split_arrays(sources, classes, split, 32)
        base_n = sum(1 for i, lab in base.labels().items() if split_of(i) == split and lab in classes)
        extra_n = sum(1 for i in labels if split_of(i) == split)
        assert x.shape == (base_n + extra_n, 1, 32, 32) and len(y) == base_n + extra_n
    assert any(split_of(i) == "test" for i in labels)  # so the counts above did leave test images out
    x, y = split_arrays(sources, classes, "train", 32)
    assert (y == classes.index("crack")).sum() == sum(1 for i, lab in labels.items()
                                                     if lab == "crack" and split_of(i) == "train")


def test_a_split_without_images_says_so(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ds_url, ann_url, _ = _reviewed(store, 3)
    sources = run_sources(ds_url, ann_url)
    splits = {split_of(i) for i in sources[0].labels}
    missing = next(s for s in ("train", "val", "test") if s not in splits)
    with pytest.raises(ConfigError, match=f"No labelled {missing} images"):
        split_arrays(sources, run_classes(sources), missing, 16)


def test_the_job_flags_pair_extra_datasets_with_annotations():
    common = ["--dataset", "file:///d.json", "--output", "file:///o"]
    cfg = parse_args([*common, "--extra-dataset", "file:///r/1.json", "--extra-annotations", "file:///ra/2.json",
                      "--extra-dataset", "file:///s/1.json", "--extra-annotations", "file:///sa/1.json",
                      "--init-model", "file:///m/3.json"])
    assert cfg.extra() == [("file:///r/1.json", "file:///ra/2.json"), ("file:///s/1.json", "file:///sa/1.json")]
    assert cfg.init_model == "file:///m/3.json"
    assert parse_args(shlex.split(entrypoint(cfg))[3:]) == cfg  # the coordinator's command line reads back
    with pytest.raises(ConfigError, match="go in pairs"):
        parse_args([*common, "--extra-dataset", "file:///r/1.json"])
    assert parse_args(common).extra() == [] and parse_args(common).init_model is None


def test_run_request_init_model_and_extra_are_for_training():
    req = RunRequest(origin="fab-a", dataset="aoi", init_model=" adc@1 ",
                     extra=[{"dataset": "reviewed-aoi", "annotations": "reviewed-aoi@2"}])
    assert req.init_model == "adc@1" and req.extra[0].annotations == "reviewed-aoi@2"
    with pytest.raises(ValueError, match="kind=train only"):
        RunRequest(origin="fab-a", dataset="aoi", kind="tune", init_model="adc@1")
    with pytest.raises(ValueError):
        RunRequest(origin="fab-a", dataset="aoi", extra=[{"dataset": "x"}])


def test_the_coordinator_ships_extras_and_the_init_model_and_names_them(fakes, monkeypatch):  # noqa: F811
    monkeypatch.setattr(_Central, "resolve", lambda self, ref: ref.with_version(ref.version or "2"), raising=False)
    trainer = runner.Trainer(fakes, load_defaults(), poll_s=0.01, lost_after_s=0.0)
    with pytest.raises(InputError, match="for the model to start from"):
        trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", init_model="dataset/x@1"))
    with pytest.raises(InputError, match="for extra annotations"):
        trainer.start(RunRequest(origin="fab-a", dataset="aoi@1",
                                 extra=[{"dataset": "r", "annotations": "dataset/r@1"}]))
    extra = [{"dataset": "reviewed-aoi", "annotations": "reviewed-aoi"}]
    job = trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", init_model="adc-aoi@7", epochs=2,
                                   model_version="v2", extra=extra))
    assert job.spec.init_model == "model/adc-aoi@7"
    assert [e.model_dump() for e in job.spec.extra] == [{"dataset": "dataset/reviewed-aoi@2",
                                                         "annotations": "annotations/reviewed-aoi@2"}]
    done = wait_for(lambda: (j := JobRecords(fakes.state).get(job.id)).status in TERMINAL and j, 30, "the job",
                    poll_s=0.05)
    assert done.status == "succeeded", done.error
    for site in ("fab-b", "fab-a"):  # the first site is lost; the second gets everything again
        for ref in ("model/adc-aoi@7", "dataset/reviewed-aoi@2", "annotations/reviewed-aoi@2"):
            assert (ref, (site,)) in fakes.pushed
        (args,) = fakes.sites[site][0].submitted.values()
        argv = shlex.split(args)
        stores = f"file:///stores/{site}/artifacts"
        assert argv[argv.index("--init-model") + 1] == f"{stores}/model/adc-aoi/7.json"
        assert argv[argv.index("--extra-dataset") + 1] == f"{stores}/dataset/reviewed-aoi/2.json"
        assert argv[argv.index("--extra-annotations") + 1] == f"{stores}/annotations/reviewed-aoi/2.json"
