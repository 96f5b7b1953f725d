"""Where a run goes, from the sites' free capacity (no Ray: views are built by hand)."""

from __future__ import annotations

import pytest

from configs.errors import InputError, SiteError
from coordinator.jobs.planner import Need, SiteCapacity, choose


def _views(**free):
    out = []
    for name, cap in free.items():
        name = name.replace("_", "-")
        if cap is None:
            out.append(SiteCapacity(name=name, reachable=False, error="connection refused"))
        else:
            cpu, gpu = cap
            out.append(SiteCapacity(name=name, reachable=True, free={"CPU": cpu, "GPU": gpu},
                                    total={"CPU": 8, "GPU": gpu}))
    return out


def test_origin_runs_it_when_it_fits():
    site, why = choose("fab-a", Need(cpus=2), _views(fab_a=(4, 0), fab_b=(8, 2)), None)
    assert site == "fab-a" and "enough free" in why


def test_gpu_need_borrows_the_site_with_free_gpus():
    site, why = choose("fab-a", Need(cpus=1, gpus=1), _views(fab_a=(4, 0), fab_b=(4, 2), fab_c=(8, 1)), "auto")
    assert site == "fab-b"
    assert "fab-a has only 4 CPU, 0 GPU free" in why and "fab-b" in why


def test_unreachable_sites_are_never_chosen():
    site, _ = choose("fab-a", Need(cpus=1, gpus=1), _views(fab_a=(4, 0), fab_b=None, fab_c=(2, 1)), "auto")
    assert site == "fab-c"
    with pytest.raises(SiteError, match="fab-b cannot run the job: connection refused"):
        choose("fab-a", Need(cpus=1), _views(fab_a=(4, 0), fab_b=None), "fab-b")


def test_nothing_fits_says_what_each_site_has():
    with pytest.raises(SiteError, match="No reachable site has 1 CPU \\+ 4 GPU free") as e:
        choose("fab-a", Need(cpus=1, gpus=4), _views(fab_a=(4, 0), fab_b=(4, 2), fab_c=None), "auto")
    assert "fab-b: 4 CPU, 2 GPU" in str(e.value) and "fab-c: unreachable" in str(e.value)


def test_asked_site_must_fit_and_exist():
    with pytest.raises(SiteError, match="fab-b has 1 CPU, 0 GPU free; the job needs 2 CPU"):
        choose("fab-a", Need(cpus=2), _views(fab_a=(4, 0), fab_b=(1, 0)), "fab-b")
    with pytest.raises(InputError, match="No site named fab-z"):
        choose("fab-a", Need(cpus=2), _views(fab_a=(4, 0)), "fab-z")
    chosen = choose("fab-a", Need(cpus=2), _views(fab_a=(4, 0), fab_b=(8, 0)), "fab-b")
    assert chosen == ("fab-b", "asked for with --on")


def _kuberay_site(name: str, *, autoscaling: bool = True):
    from configs.platform import SiteConfig

    return SiteConfig.model_validate({
        "name": name, "store": {"url": "s3://b/" + name},
        "runtime": {"kind": "kuberay", "autoscaling": autoscaling, "workers": [
            {"name": "cpu", "replicas": 1, "max_replicas": 2, "resources": {"cpu": "4", "memory": "8Gi"}},
            {"name": "gpu", "replicas": 0, "max_replicas": 2, "resources": {"cpu": "8", "memory": "32Gi", "gpus": 2}}]},
        "gateway": {"kind": "karmada", "cluster": f"member-{name}"}})


class _Center:
    """What planner.view reads: status rows (Ray through the gateway + Karmada's Cluster view)."""

    def __init__(self, sites, rows):
        self._sites, self._rows = {s.name: s for s in sites}, rows

    def status(self):
        return self._rows

    def site(self, name):
        return self._sites[name]


def _row(name, ray_free, ray_total, cluster_free=None, ready=True):
    res = lambda d: {"CPU": d[0], "GPU": d[1], "memory": 0.0}  # noqa: E731
    row = {"name": name, "reachable": True, "resources": {"available": res(ray_free), "total": res(ray_total)}}
    if cluster_free is not None:
        row["cluster"] = {"ready": ready, "resources": {"available": res(cluster_free)}}
    return row


def test_autoscaling_kuberay_site_counts_what_it_can_grow_into():
    from coordinator.jobs.planner import view

    # Ray runs one CPU worker (4 CPU), no GPU pod yet; the member cluster has 3 GPUs free, the
    # worker groups could hold 4: the autoscaler can add 3
    center = _Center([_kuberay_site("fab-b")], [_row("fab-b", (4, 0), (4, 0), cluster_free=(64, 3))])
    [v] = view(center)
    assert v.free["GPU"] == 3 and v.total["GPU"] == 3
    assert v.free["CPU"] == 4 + (2 * 4 + 2 * 8 - 4)  # up to the groups' maxima, not the cluster's 64
    home = SiteCapacity(name="fab-a", reachable=True, free={"CPU": 4, "GPU": 0})
    site, _ = choose("fab-a", Need(cpus=1, gpus=1), [home, v], None)
    assert site == "fab-b"


@pytest.mark.parametrize("autoscaling, ready", [(False, True), (True, False)])
def test_no_headroom_without_autoscaling_or_a_ready_cluster(autoscaling, ready):
    from coordinator.jobs.planner import view

    center = _Center([_kuberay_site("fab-b", autoscaling=autoscaling)],
                     [_row("fab-b", (4, 0), (4, 0), cluster_free=(64, 3), ready=ready)])
    [v] = view(center)
    assert v.free == {"CPU": 4, "GPU": 0, "memory": 0.0}
