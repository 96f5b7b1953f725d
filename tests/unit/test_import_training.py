"""Training on an imported dataset plus an annotations artifact: the labels of the annotations
replace the dataset's own, unlabelled images are skipped, the classes are the labels present, and
the coordinator ships the annotations with the dataset and names them on the job's command line."""

from __future__ import annotations

import hashlib
import io
import shlex

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from configs.errors import InputError
from configs.loader import load_defaults
from configs.runs import TERMINAL, RunRequest
from coordinator.jobs import runner
from coordinator.state.jobs import JobRecords
from data.annotations import publish_annotations
from data.artifacts import ArtifactRef, ArtifactStore
from data.dataset import open_dataset
from data.image_datasets import ImageRecord, publish_images
from tests.unit.test_runner import _Central, fakes  # noqa: F401 - the fixture of fake sites
from tests.waiting import wait_for
from train_jobs.pipeline import DecodeAndLabel, run_labels
from train_jobs.train import parse_args


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()

def test_annotations_replace_the_dataset_labels(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    images = [png(i) for i in range(5)]
    labels = ["short", "short", "open", None, None]
    publish_images(store, "fab", (ImageRecord(d, label=lab, source=str(i)) for i, (d, lab) in
                                  enumerate(zip(images, labels))), source={}, annotator="import")
    ds = open_dataset(store.manifest_url(ArtifactRef("dataset", "fab", "1")))
    own, classes, ann = run_labels(ds, None)
    assert (len(own), classes, ann) == (3, ["open", "short"], None)


    ids = [hashlib.sha256(d).hexdigest() for d in images]
    verdicts = pa.table({"image_id": [ids[0], ids[3], "not-in-the-dataset"], "label": ["scratch", "open", "mura"]})
    publish_annotations(store, "verdicts", verdicts, author="rev", classes=["scratch", "open", "mura"])
    url = store.manifest_url(ArtifactRef("annotations", "verdicts", "1"))
    got, classes, ann = run_labels(ds, url)
    assert got == {ids[0]: "scratch", ids[3]: "open"} and classes == ["scratch", "open"] and ann == "verdicts@1"
    out = DecodeAndLabel(got, classes, 8)(ds.read_images(["image_id", "image"]))
    assert out["pixels"].shape == (2, 8, 8)  # the images without a label are skipped

def test_train_job_takes_annotations_flag():
    cfg = parse_args(["--dataset", "file:///d.json", "--output", "file:///o", "--annotations", "file:///a/1.json"])
    assert cfg.annotations == "file:///a/1.json"
    assert parse_args(["--dataset", "file:///d.json", "--output", "file:///o"]).annotations is None

def test_run_request_annotations():
    assert RunRequest(origin="fab-a", dataset="aoi", annotations=" fab@2 ").annotations == "fab@2"
    with pytest.raises(ValueError):
        RunRequest(origin="fab-a", dataset="aoi", annotations="  ")

def test_the_coordinator_ships_the_annotations_and_passes_their_url(fakes, monkeypatch):  # noqa: F811
    monkeypatch.setattr(_Central, "resolve", lambda self, ref: ref.with_version(ref.version or "2"), raising=False)
    trainer = runner.Trainer(fakes, load_defaults(), poll_s=0.01, lost_after_s=0.0)
    with pytest.raises(InputError, match="for the annotations"):
        trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", annotations="dataset/x@1"))
    job = trainer.start(RunRequest(origin="fab-a", dataset="aoi@1", annotations="labels", epochs=2,
                                   model_version="v1"))
    assert job.spec.annotations == "annotations/labels@2"
    done = wait_for(lambda: (j := JobRecords(fakes.state).get(job.id)).status in TERMINAL and j, 30, "the job",
                    poll_s=0.05)
    assert done.status == "succeeded", done.error
    for site in ("fab-b", "fab-a"):
        assert ("annotations/labels@2", (site,)) in fakes.pushed
        (args,) = fakes.sites[site][0].submitted.values()
        argv = shlex.split(args)
        assert argv[argv.index("--annotations") + 1] == f"file:///stores/{site}/artifacts/annotations/labels/2.json"
