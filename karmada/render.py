"""`adcp render`: the objects of the platform's KubeRay sites, for kubectl at each site
(target `kuberay`) or for the Karmada apiserver (target `karmada`), plus writing them as YAML
files and reading them back (`adcp apply`).

Karmada mode keeps ONE resource template per kind (RayCluster `<cluster_name>`, RayService
`<cluster_name>-serve` in `karmada.namespace`), rendered from a template site, propagated to every
site's cluster by its `karmada.site_label`, and one override file per site holding that site's
differences (registry, GPUs, replicas, store, node selectors, labels), so each cluster receives
exactly what `--target kuberay` renders for it. With `karmada.spread.sites`, the RayService
template is placed by `policies/spread.yaml` instead, its replicas divided over those sites; their
overrides then leave worker replicas to Karmada.

The RayService holds both Serve apps (ADC and the review station) and their environment
(`configs.site_env`: site, store, display names, the center's public key and URL); the review DB
URL is read from the Secret `SiteConfig.review_db_secret` (key `url`). The render writes that
Secret when the platform file gives the site's `review.db_url`; otherwise the operator creates it,
at the site for `kuberay`, in `karmada.namespace` on the Karmada apiserver for `karmada`. There
`policies/review-db-secrets.yaml` pins each site's Secret to that site's cluster only. The
RayService template refers to the neutral `adcp-review-db` and each site's override names its own
Secret, so that `propagateDeps` never carries one site's database credentials to another site's
cluster.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import yaml

from configs import site_env
from configs.errors import ConfigError, InputError, NotFoundError
from configs.kube import KubeRayRuntime
from configs.models import ServeConfig
from configs.platform import PlatformConfig, SiteConfig
from configs.yaml_files import read_yaml_documents
from karmada import _patch, policies
from raycluster import kuberay
from raycluster.k8s_names import dns_name, label_value

Target = Literal["kuberay", "karmada"]
TARGETS = ("kuberay", "karmada")
#: The review DB Secret the Karmada RayService template refers to; no such object exists on the
#: Karmada apiserver, so propagateDeps carries none (each site's override names its own).
TEMPLATE_DB_SECRET = "adcp-review-db"

__all__ = ["TEMPLATE_DB_SECRET", "Target", "cluster_of", "load", "render", "review_db_secret", "serve_env",
           "site_objects", "training_job", "write"]


def cluster_of(site: SiteConfig) -> str:
    """The Karmada Cluster name of a site: the gateway's cluster, else the site name."""
    return site.gateway.cluster if site.gateway.kind == "karmada" else site.name


def with_registry(obj: dict, registry: str | None) -> dict:
    """`obj` with every container image pulled from `registry` (unchanged when None)."""
    if not registry:
        return obj
    ops = [{"op": "replace", "path": p, "value": _patch.with_registry(_patch.get(obj, p), registry)}
           for p in _patch.image_paths(obj)]
    return _patch.apply(obj, ops)


def site_objects(site: SiteConfig, serve: ServeConfig | None = None, *, model_uri: str | None = None,
                 working_dir: str | None = None, env: dict[str, str] | None = None,
                 db_secret: str | None = None) -> dict[str, dict]:
    """{"raycluster": ..., "rayservice": ...} as kubectl applies them at the site: KubeRay's objects
    with images from the site's registry (`env`, `db_secret`: as `kuberay.ray_service` takes them)."""
    cluster = kuberay.ray_cluster(site)
    service = kuberay.ray_service(site, serve, model_uri=model_uri, working_dir=working_dir, env=env,
                                  db_secret=db_secret)
    return {"raycluster": with_registry(cluster, site.registry), "rayservice": with_registry(service, site.registry)}


def serve_env(platform: PlatformConfig, site: SiteConfig, public_key: str | None = None) -> dict[str, str]:
    """The Serve apps' environment at `site` as rendered (the DB URL comes from the Secret): the
    platform's display names, `center.api.public_url`, and the center's public key when given."""
    return site_env.site_env(site, platform.display_names, public_key=public_key,
                             center_url=platform.center.api.public_url)


def _kuberay_sites(platform: PlatformConfig, names: list[str] | None) -> list[SiteConfig]:
    kube = [s for s in platform.sites if isinstance(s.runtime, KubeRayRuntime)]
    if names is not None:
        known = {s.name: s for s in platform.sites}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NotFoundError(f"Unknown site: {', '.join(unknown)}.",
                                allowed=", ".join(known) or "(the platform has no sites)")
        local = [n for n in names if not isinstance(known[n].runtime, KubeRayRuntime)]
        if local:
            raise ConfigError(f"Site {', '.join(local)} has no kuberay runtime, so it has no KubeRay objects.",
                              allowed=", ".join(s.name for s in kube) or "(no kuberay site)",
                              hint="Set runtime: {kind: kuberay} for it in the platform file.")
        kube = [known[n] for n in dict.fromkeys(names)]
    if not kube:
        raise ConfigError("The platform has no site with a kuberay runtime: nothing to render.",
                          hint="Give a site `runtime: {kind: kuberay}` in the platform file.")
    return kube


def render(platform: PlatformConfig, target: Target, *, sites: list[str] | None = None,
           serve: ServeConfig | None = None, model_uri: str | None = None, working_dir: str | None = None,
           template_site: str | None = None, center_public_key: str | None = None) -> dict[str, list[dict]]:
    """Relative file path -> objects. `kuberay`: `<site>/raycluster.yaml`, `<site>/rayservice.yaml`;
    `karmada`: `templates/*.yaml`, `policies/propagation.yaml`, `policies/override-<site>.yaml`,
    `policies/review-db-secrets.yaml`, `policies/spread.yaml` when the RayService is spread, and
    `secrets/review-db-<site>.yaml` (kuberay: `<site>/review-db-secret.yaml`) for each site whose
    `review.db_url` is set.
    `template_site` (default: the first rendered site) is the site the Karmada templates are
    rendered from. `center_public_key`: the center's station-token key (PEM) for the review
    stations (`GET /api/v1/review/public-key`); without it they accept no station token.

    Raises NotFoundError for an unknown site, ConfigError when no kuberay site is selected or the
    sites cannot share one Karmada template, InputError for an unknown target."""
    if target not in TARGETS:
        raise InputError(f'Got "{target}" for the render target.', allowed=", ".join(TARGETS))
    chosen = _kuberay_sites(platform, sites)
    envs = {s.name: serve_env(platform, s, center_public_key) for s in chosen}
    objects = {s.name: site_objects(s, serve, model_uri=model_uri, working_dir=working_dir, env=envs[s.name])
               for s in chosen}
    if target == "kuberay":
        out = {f"{name}/{kind}.yaml": [obj] for name, objs in objects.items() for kind, obj in objs.items()}
        out.update({f"{s.name}/review-db-secret.yaml": [review_db_secret(s, s.runtime.namespace)]
                    for s in chosen if s.review.db_url})
        return out
    tpl = _template_site(chosen, template_site)
    templates = {**objects[tpl.name], "rayservice": site_objects(
        tpl, serve, model_uri=model_uri, working_dir=working_dir, env=envs[tpl.name],
        db_secret=TEMPLATE_DB_SECRET)["rayservice"]}
    return _karmada(platform, chosen, objects, templates)


def _template_site(chosen: list[SiteConfig], name: str | None) -> SiteConfig:
    if name is None:
        return chosen[0]
    found = next((s for s in chosen if s.name == name), None)
    if found is None:
        raise NotFoundError(f"Template site {name} is not among the rendered kuberay sites.",
                            allowed=", ".join(s.name for s in chosen))
    return found


def _check_namespaces(platform: PlatformConfig, chosen: list[SiteConfig]) -> None:
    ns = platform.karmada.namespace
    off = [s.name for s in chosen if s.runtime.namespace != ns]
    if off:
        raise ConfigError(
            f"Karmada propagates an object into its template's namespace ({ns}), but site "
            f"{', '.join(off)} puts its Ray objects elsewhere.",
            hint=f"Set runtime.namespace: {ns} for those sites, or karmada.namespace to theirs.")


def _spread_sites(platform: PlatformConfig, chosen: list[SiteConfig]) -> list[str]:
    spread = platform.karmada.spread.sites
    if not spread:
        return []
    names = [s.name for s in chosen]
    outside = [n for n in spread if n not in names]
    if outside:
        raise ConfigError(f"karmada.spread.sites names {', '.join(outside)}, which is not a rendered kuberay site.",
                          allowed=", ".join(names))
    left = [n for n in names if n not in spread]
    if left:
        raise ConfigError(
            f"With karmada.spread.sites set, the one RayService template is spread over those sites; "
            f"site {', '.join(left)} would get no RayService.",
            hint="Add them to karmada.spread.sites, render them with --sites separately without a spread, "
                 "or leave karmada.spread.sites empty.")
    return list(spread)


def _karmada(platform: PlatformConfig, chosen: list[SiteConfig], objects: dict[str, dict[str, dict]],
             templates: dict[str, dict]) -> dict[str, list[dict]]:
    """The templates are the template site's own objects; every site's differences from them,
    that site included (none), go into its override file."""
    _check_namespaces(platform, chosen)
    k = platform.karmada
    spread = _spread_sites(platform, chosen)
    placed = [templates["raycluster"]] + ([] if spread else [templates["rayservice"]])
    out: dict[str, list[dict]] = {
        "templates/raycluster.yaml": [templates["raycluster"]],
        "templates/rayservice.yaml": [templates["rayservice"]],
        "policies/propagation.yaml": [policies.propagation_policy(
            "adcp-ray-sites", placed, namespace=k.namespace, failover=k.failover, cluster_scoped=k.cluster_scoped,
            match_expressions=policies.label_in(k.site_label, [label_value(s.name) for s in chosen]))],
    }
    out["policies/review-db-secrets.yaml"] = [
        policies.propagation_policy(
            dns_name("adcp-review-db", site.name), [_secret_ref(site.review_db_secret, k.namespace)],
            namespace=k.namespace, cluster_names=[cluster_of(site)], cluster_scoped=k.cluster_scoped)
        for site in chosen]
    out.update({f"secrets/review-db-{site.name}.yaml": [review_db_secret(site, k.namespace)]
                for site in chosen if site.review.db_url})
    for site in chosen:
        out[f"policies/override-{site.name}.yaml"] = [
            policies.site_override_policy(
                dns_name("adcp-override", site.name, kind), templates[kind], objects[site.name][kind],
                cluster=cluster_of(site), namespace=k.namespace, cluster_scoped=k.cluster_scoped,
                divided=kind == "rayservice" and site.name in spread)
            for kind in ("raycluster", "rayservice")]
    if spread:
        by_name = {s.name: s for s in chosen}
        scheduling = policies.divided_scheduling(
            spread, weighting=k.spread.weighting, weights=k.spread.weights,
            cluster_of=lambda n: cluster_of(by_name[n]))
        out["policies/spread.yaml"] = [policies.propagation_policy(
            "adcp-serve-spread", [templates["rayservice"]], namespace=k.namespace, failover=k.failover,
            replica_scheduling=scheduling, cluster_scoped=k.cluster_scoped,
            match_expressions=policies.label_in(k.site_label, [label_value(n) for n in spread]))]
    return out


def review_db_secret(site: SiteConfig, namespace: str) -> dict:
    """The Secret holding `site`'s review DB URL (key `url`), for a site whose platform file gives
    `review.db_url`; the rendered files are written mode 0600 (`write`). Without a `db_url` the
    operator creates the Secret (`kubectl create secret generic ... --from-literal=url=...`)."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": site.review_db_secret, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "adcp"}},
            "type": "Opaque", "stringData": {"url": site.review.db_url}}


def _secret_ref(name: str, namespace: str) -> dict:
    """A Secret as a policy selects it (the operator creates the object itself)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}}


def write(rendered: dict[str, list[dict]], out: Path) -> list[Path]:
    """Write each entry as a multi-document YAML file under `out`, atomically (a temp file renamed
    into place); returns the paths. Raises InputError for a path that would leave `out`."""
    root = Path(out).resolve()
    written = []
    for rel, objs in rendered.items():
        path = (root / rel).resolve()
        if root not in path.parents:
            raise InputError(f"Rendered path {rel!r} leaves the output folder {root}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump_all(objs, sort_keys=False, allow_unicode=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def load(paths: list[Path]) -> list[dict]:
    """Every YAML document in `paths` (files, or folders searched for *.yaml/*.yml in name order).
    Raises NotFoundError for a missing path, InputError for invalid YAML or a document that is
    not a mapping."""
    docs: list[dict] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise NotFoundError(f"{path} does not exist.")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) \
            if path.is_dir() else [path]
        for file in files:
            docs += _read(file)
    return docs


def _read(file: Path) -> list[dict]:
    found = read_yaml_documents(file, "Manifest file", error=InputError)
    bad = [i for i, d in enumerate(found) if not isinstance(d, dict)]
    if bad:
        raise InputError(f"{file}: document {bad[0] + 1} is not a mapping (a Kubernetes object).")
    return found


def training_job(platform: PlatformConfig, site_name: str, *, name: str, entrypoint: str, runtime_env: dict,
                 gpus: int, cluster: Literal["existing", "own"], job_id: str | None = None) -> list[dict]:
    """[RayJob, PropagationPolicy pinning it to the site's Karmada cluster], for a training job run
    on borrowed capacity. Raises NotFoundError for an unknown site, ConfigError for a site without
    a kuberay runtime."""
    site = _kuberay_sites(platform, [site_name])[0]
    job = with_registry(kuberay.ray_job(site, name=name, entrypoint=entrypoint, runtime_env=runtime_env,
                                        cluster=cluster, gpus=gpus, job_id=job_id), site.registry)
    return [job, policies.pinned_job_policy(job, cluster_of(site), namespace=job["metadata"]["namespace"])]
