"""Where a run goes, from the sites' free capacity (no Ray: views are built by hand)."""

from __future__ import annotations

import pytest

from configs.errors import InputError, SiteError
from coordinator.planner import Need, SiteView, choose


def _views(**free):
    out = []
    for name, cap in free.items():
        name = name.replace("_", "-")
        if cap is None:
            out.append(SiteView(name, False, error="connection refused"))
        else:
            cpu, gpu = cap
            out.append(SiteView(name, True, free={"CPU": cpu, "GPU": gpu}, total={"CPU": 8, "GPU": gpu}))
    return out


def test_origin_runs_it_when_it_fits():
    site, why = choose("fab-a", Need(2), _views(fab_a=(4, 0), fab_b=(8, 2)), None)
    assert site == "fab-a" and "enough free" in why


def test_gpu_need_borrows_the_site_with_free_gpus():
    site, why = choose("fab-a", Need(1, 1), _views(fab_a=(4, 0), fab_b=(4, 2), fab_c=(8, 1)), "auto")
    assert site == "fab-b"
    assert "fab-a has only 4 CPU, 0 GPU free" in why and "fab-b" in why


def test_unreachable_sites_are_never_chosen():
    site, _ = choose("fab-a", Need(1, 1), _views(fab_a=(4, 0), fab_b=None, fab_c=(2, 1)), "auto")
    assert site == "fab-c"
    with pytest.raises(SiteError, match="fab-b cannot run the job: connection refused"):
        choose("fab-a", Need(1), _views(fab_a=(4, 0), fab_b=None), "fab-b")


def test_nothing_fits_says_what_each_site_has():
    with pytest.raises(SiteError, match="No reachable site has 1 CPU \\+ 4 GPU free") as e:
        choose("fab-a", Need(1, 4), _views(fab_a=(4, 0), fab_b=(4, 2), fab_c=None), "auto")
    assert "fab-b: 4 CPU, 2 GPU" in str(e.value) and "fab-c: unreachable" in str(e.value)


def test_asked_site_must_fit_and_exist():
    with pytest.raises(SiteError, match="fab-b has 1 CPU, 0 GPU free; the job needs 2 CPU"):
        choose("fab-a", Need(2), _views(fab_a=(4, 0), fab_b=(1, 0)), "fab-b")
    with pytest.raises(InputError, match="No site named fab-z"):
        choose("fab-a", Need(2), _views(fab_a=(4, 0)), "fab-z")
    assert choose("fab-a", Need(2), _views(fab_a=(4, 0), fab_b=(8, 0)), "fab-b") == ("fab-b", "asked for with --on")
