"""The gate, run by the coordinator: score a line's challenger against its champion at a site, and
the golden sets it scores them on.

`run_gate(center, line, version)` resolves the champion (the line's `champion` alias at the site),
the golden set (the line's `golden` in the platform file, else the latest `dataset/golden-<line>`)
and the recent verdicts (`dataset/` + `annotations/reviewed-<dataset line>` when they exist), ships
them with the challenger to the site (`Center.push`), runs `python -m train_jobs.gate` there as a
Ray job through the site gateway (`Center.run_site_job`: the code bundle, a bounded wait), reads
`gate.json` home and stores it as the version's "gate" report (`center.lines.put_report`). A
challenger that fails the gate is an answer (`passed` false, the failed figures named), not an
error; SiteError/JobError mean the gate could not be run.

`make_golden(center, line, source)` publishes the test-split images of a dataset (never trained
on: `data.schema.split_of`) with their labels as `dataset/golden-<line>` (`publish_images`: a
version only when something changed, so the same images give the same version).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pyarrow.parquet as pq

from configs.errors import AdcpError, InputError, NotFoundError, SiteError
from configs.lines import GateLimits, LineConfig
from configs.models import GateJobConfig
from configs.protocol import GATE_MODULE, Marker, arguments
from coordinator.center.core import Center
from coordinator.jobs.review_sync import line_name
from data.artifacts import ArtifactRef
from data.dataset import open_dataset
from data.image_datasets import ImageRecord, publish_images
from data.model_format import read_metadata
from data.schema import split_of

__all__ = ["REPORT_FILE", "dataset_line", "golden_name", "make_golden", "run_gate"]

REPORT_FILE = "gate.json"  # what train_jobs.gate writes (the coordinator never imports train_jobs)
#: Rows read from a source shard at a time while a golden set is made (bounds the memory).
_BATCH_ROWS = 256
_COLUMNS = ["image_id", "image", "site", "product", "process_step", "aoi_machine", "captured_at"]

Event = Callable[[str], None]


def golden_name(line: str) -> str:
    """The artifact name of a line's golden set."""
    return f"golden-{line}"


def dataset_line(text: str | None) -> str:
    """The dataset line (a dataset's name: no kind, no version) of `aoi`, `aoi@3`, `dataset/aoi@3`."""
    return str(text or "").split("@", 1)[0].removeprefix("dataset/")


def _dataset_ref(center: Center, text: str) -> ArtifactRef:
    ref = ArtifactRef.parse(text if "/" in text else f"dataset/{text}")
    if ref.kind != "dataset":
        raise InputError(f"Got {ref} for a dataset.", allowed="NAME[@VERSION] or dataset/NAME[@VERSION]")
    return center.central.resolve(ref)


# --- golden sets ---------------------------------------------------------------------------------

def _test_records(url: str, labels: dict[str, str], counts: dict[str, int]) -> Iterator[ImageRecord]:
    """The labelled test-split images of the dataset at `url`, one shard batch at a time."""
    dataset = open_dataset(url)
    for shard in dataset.shard_urls:
        fs, path = fsspec.core.url_to_fs(shard)
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            columns = [c for c in _COLUMNS if c in file.schema_arrow.names]
            for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    image_id = row["image_id"]
                    counts["seen"] += 1
                    if split_of(image_id) != "test" or image_id not in labels:
                        continue
                    counts["test"] += 1
                    yield ImageRecord(data=row["image"], label=labels[image_id], product=row.get("product") or "",
                                      site=row.get("site") or "", process_step=row.get("process_step") or "",
                                      aoi_machine=row.get("aoi_machine") or "", captured_at=row.get("captured_at"),
                                      source=f"{dataset.dataset_id}:{image_id}")


def make_golden(center: Center, line: str, source: str, *, name: str | None = None,
                user: str | None = None) -> dict[str, Any]:
    """Publish the labelled test-split images of dataset `source` (NAME@V) as the next version of
    `dataset/<name or golden-<line>>`; nothing new (the same images and labels) keeps the latest
    version (`changed` false). A golden set only grows: images of an earlier version stay.
    NotFoundError for an unknown dataset, InputError when it has no labelled test image."""
    ref = _dataset_ref(center, source)
    target = name or golden_name(line)
    ArtifactRef("dataset", target)  # InputError for a name that is not an artifact name
    dataset = open_dataset(center.central.manifest_url(ref))
    counts = {"seen": 0, "test": 0}
    records = _test_records(dataset.url, dataset.labels(), counts)
    try:
        result = publish_images(center.central, target, records, annotator=user or "golden",
                                source={"golden_of": line, "from": dataset.dataset_id, "split": "test"})
    except InputError as e:
        raise InputError(f"Dataset {dataset.dataset_id} has no labelled test-split image to make a golden set "
                         f"of ({counts['seen']} images read).", hint="Give a labelled dataset.") from e
    same = not result.changed
    return {"line": line, "golden": result.dataset, "annotations": result.annotations, "from": dataset.dataset_id,
            "images": result.images, "new": result.new, "test_images": counts["test"], "changed": result.changed,
            "rejected": result.rejected[:20],
            "message": (f"{result.dataset} already holds these images and labels: unchanged" if same
                        else f"published {result.dataset}: {result.new} new of {counts['test']} test-split images "
                        f"of {dataset.dataset_id}, {result.images} in all")}


# --- the gate ------------------------------------------------------------------------------------

def _golden(center: Center, line: str, cfg: LineConfig | None) -> ArtifactRef:
    if cfg is not None and cfg.golden:
        return _dataset_ref(center, cfg.golden)
    name = golden_name(line)
    if center.central.versions("dataset", name):
        return center.central.resolve(ArtifactRef("dataset", name))
    raise InputError(f"Line {line} has no golden set: the platform file names none and there is no "
                     f"dataset/{name}.",
                     hint=f"Make one with `adcp model golden {line} --from DATASET@VERSION` "
                     "(its test-split images, never trained on).")


def _recent(center: Center, dataset: str) -> tuple[ArtifactRef, ArtifactRef] | None:
    """The latest reviewed images of the dataset line and their verdict labels, when both exist."""
    name = line_name(dataset)
    if not center.central.versions("dataset", name) or not center.central.versions("annotations", name):
        return None
    return (center.central.resolve(ArtifactRef("dataset", name)),
            center.central.resolve(ArtifactRef("annotations", name)))


def _site_for(center: Center, cfg: LineConfig | None, site: str | None) -> str:
    if site is not None:
        return center.site(site).name
    names = cfg.sites if cfg is not None and cfg.sites else [s.name for s in center.sites()]
    if not names:
        raise InputError("No site to run the gate at.", hint="Add a site, or give the line sites in the platform file.")
    return center.site(names[0]).name


def _read_report(center: Center, site: str, key: str, found: dict[str, Any]) -> dict[str, Any]:
    """gate.json from the site's store when the center can read it, else the job's ADCP_GATE line."""
    if center.reachable(site):
        store = center.store(site)
        try:
            return json.loads(store.fs.cat_file(store.path(key)))
        except (OSError, ValueError) as e:
            raise SiteError(f"The gate at {site} finished but its {key} is not readable: {e}") from e
    return {k: v for k, v in found.items() if k not in ("uri", "job_id")}


def run_gate(center: Center, line: str, version: str, *, site: str | None = None, timeout_s: float = 900,
             on_event: Event | None = None) -> dict[str, Any]:
    """Gate `model/<line>@<version>` at `site` (default: the line's first site) and store the
    report; returns it (`passed`, `failed`, `reasons`, `figures`, `thresholds`, `data`, plus
    `site`, `job_id`, `champion`, `challenger`). NotFoundError for an unknown model or site,
    InputError without a golden set, SiteError/JobError when the gate cannot run."""
    say = on_event or (lambda _msg: None)
    cfg = center.config.line(line)
    challenger = ArtifactRef("model", line, version)
    if not center.central.exists(challenger):
        raise NotFoundError(f"No model {line}@{version} in the central store.", hint="See `adcp model list`.")
    where = _site_for(center, cfg, site)
    champion_version = center.lines.aliases(line).get(where, {}).get("champion")
    champion = ArtifactRef("model", line, champion_version) if champion_version else None
    if champion is not None and not center.central.exists(champion):
        raise NotFoundError(f"The champion of {line} at {where}, {champion}, is not in the central store.")
    golden = _golden(center, line, cfg)
    lineage = read_metadata(center.central.manifest_url(challenger)).lineage
    recent = _recent(center, dataset_line(cfg.dataset if cfg is not None else lineage.get("dataset")))
    refs = [challenger, *([champion] if champion else []), golden, *(recent or ())]
    for ref in refs:
        say(f"ship {ref} to {where}")
        center.push(ref, [where])

    store = center.store(where)
    key = f"work/gate/{line}/{version}-{uuid.uuid4().hex[:8]}/{REPORT_FILE}"
    job = GateJobConfig(
        challenger=store.manifest_url(challenger),
        champion=store.manifest_url(champion) if champion else None,
        golden=store.manifest_url(golden),
        recent_dataset=store.manifest_url(recent[0]) if recent else None,
        recent_annotations=store.manifest_url(recent[1]) if recent else None,
        limits=(cfg.gate if cfg is not None else GateLimits()).model_dump(),
        output=f"{store.url}/{key.rsplit('/', 1)[0]}",
    )
    say(f"score {line}@{version} against {champion or 'no champion'} on {golden}"
        + (f" and {recent[0]}" if recent else "") + f" at {where}")
    what = f"gate of {line}@{version} at {where}"
    try:
        found = center.run_site_job(where, ["python", "-m", GATE_MODULE, *arguments(job)], what=what,
                                    marker=Marker.GATE, timeout_s=timeout_s)
    except AdcpError:
        raise
    except Exception as e:  # the gateway's client raises its transport's errors when the site goes away
        raise SiteError(f"The {what} could not be followed: {type(e).__name__}: {e}", site=where) from e
    report = {**_read_report(center, where, key, found), "site": where, "job_id": found.get("job_id"),
              "uri": found.get("uri")}
    center.lines.put_report(line, version, "gate", report)
    say(f"{line}@{version} {'passed' if report['passed'] else 'failed'} the gate"
        + ("" if report["passed"] else f": {', '.join(report['failed'])}"))
    return report
