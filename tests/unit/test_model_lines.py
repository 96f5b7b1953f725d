"""Model lines' aliases in the state DB (coordinator.state.model_lines) and how rollouts move them:
promote (previous <- champion, champion <- version, challenger cleared), set/remove by hand, every
move recorded with who and why, reports stored as JSON newest first; `rollout.deploy` promotes per
site that serves (not at a failed site, not another line's aliases), `rollout.rollback` moves
champion back with why "rollback[: reason]"."""

from __future__ import annotations

import pytest

from configs.errors import InputError, SiteError
from coordinator.center.core import Center
from coordinator.jobs import aliases, rollout
from coordinator.state.db import State
from coordinator.state.model_lines import ModelLines
from tests.line_fakes import fake_site_legs, publish_model
from tests.platform_fixtures import platform_yaml


@pytest.fixture
def lines(tmp_path):
    state = State(tmp_path / "c.db")
    try:
        yield ModelLines(state)
    finally:
        state.close()


def _moves(lines, line, site=None):
    return [(m["site"], m["alias"], m["from_version"], m["to_version"], m["by"], m["why"])
            for m in lines.moves(line, site)]


def test_promote_moves_champion_to_previous_and_clears_the_challenger(lines):
    assert lines.promote("adc", "fab-a", "1", by="ann", why="deploy") == {"champion": "1"}
    assert lines.set_alias("adc", "fab-a", "challenger", "2", by="retrain", why="retrained on 200 verdicts") == {
        "champion": "1", "challenger": "2"}
    after = lines.promote("adc", "fab-a", "2", by="bob", why="canary")
    assert after == {"champion": "2", "previous": "1"}
    assert lines.aliases("adc") == {"fab-a": {"champion": "2", "previous": "1"}}
    # newest first; one move per alias that changed, each with who and why
    assert _moves(lines, "adc") == [
        ("fab-a", "challenger", "2", None, "bob", "canary"),
        ("fab-a", "champion", "1", "2", "bob", "canary"),
        ("fab-a", "previous", None, "1", "bob", "canary"),
        ("fab-a", "challenger", None, "2", "retrain", "retrained on 200 verdicts"),
        ("fab-a", "champion", None, "1", "ann", "deploy"),
    ]
    assert all(m["line"] == "adc" and m["at"] for m in lines.moves("adc"))


def test_promoting_the_champion_again_keeps_previous(lines):
    lines.promote("adc", "fab-a", "1", by="a", why="deploy")
    lines.promote("adc", "fab-a", "2", by="a", why="deploy")
    n = len(lines.moves("adc"))
    again = lines.promote("adc", "fab-a", "2", by="a", why="redeploy with a shadow")
    assert again == {"champion": "2", "previous": "1"}
    assert len(lines.moves("adc")) == n


def test_sites_and_lines_are_apart(lines):
    lines.promote("adc", "fab-a", "1", by="a", why="deploy")
    lines.promote("adc", "fab-b", "3", by="a", why="deploy")
    lines.promote("other", "fab-a", "7", by="a", why="deploy")
    assert lines.aliases("adc") == {"fab-a": {"champion": "1"}, "fab-b": {"champion": "3"}}
    assert lines.aliases("adc", "fab-b") == {"fab-b": {"champion": "3"}}
    assert lines.aliases("other") == {"fab-a": {"champion": "7"}}
    assert [m["to_version"] for m in lines.moves("adc", "fab-b")] == ["3"]
    assert lines.lines() == ["adc", "other"]


def test_set_alias_none_removes_and_is_recorded(lines):
    lines.set_alias("adc", "fab-a", "challenger", "2", by="a", why="retrain")
    assert lines.set_alias("adc", "fab-a", "challenger", None, by="eve", why="gate refused") == {}
    assert lines.aliases("adc") == {}
    assert _moves(lines, "adc")[0] == ("fab-a", "challenger", "2", None, "eve", "gate refused")


@pytest.mark.parametrize("call", [
    lambda m: m.set_alias("adc", "fab-a", "winner", "1", by="a", why="x"),  # not an alias
    lambda m: m.set_alias("adc", "Fab_A", "champion", "1", by="a", why="x"),  # not a site name
    lambda m: m.promote("ADC!", "fab-a", "1", by="a", why="x"),  # not a model name
    lambda m: m.promote("adc", "fab-a", "1/2", by="a", why="x"),  # not a version
    lambda m: m.promote("adc", "fab-a", "1", by="", why="x"),  # nobody
    lambda m: m.put_report("adc", "1", "vibes", {}),  # not a report kind
])
def test_bad_input_is_refused_and_changes_nothing(lines, call):
    with pytest.raises(InputError):
        call(lines)
    assert lines.aliases("adc") == {} and lines.moves("adc") == [] and lines.reports("adc") == []


def test_reports_are_json_newest_first(lines):
    lines.put_report("adc", "2", "gate", {"passed": False, "failed": ["escape_rate"], "figures": {"x": 0.5}})
    lines.put_report("adc", "2", "gate", {"passed": True, "failed": []})
    lines.put_report("adc", "3", "shadow", {"agreement": 0.97})
    assert [(r["version"], r["kind"], r["report"].get("passed")) for r in lines.reports("adc")] == [
        ("3", "shadow", None), ("2", "gate", True), ("2", "gate", False)]
    older = lines.reports("adc", "2")[1]
    assert older["report"] == {"passed": False, "failed": ["escape_rate"], "figures": {"x": 0.5}} and older["at"]


def test_a_failed_write_leaves_no_half_move(lines, monkeypatch):
    lines.promote("adc", "fab-a", "1", by="a", why="deploy")
    real = ModelLines._move
    calls = []

    def second_fails(db, *args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(db, *args)

    monkeypatch.setattr(ModelLines, "_move", staticmethod(second_fails))
    with pytest.raises(RuntimeError):
        lines.promote("adc", "fab-a", "2", by="a", why="deploy")
    assert lines.aliases("adc") == {"fab-a": {"champion": "1"}} and len(lines.moves("adc")) == 1


# --- rollouts move the aliases ----------------------------------------------------------------

@pytest.fixture
def center(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(platform_yaml({"fab-a": {}, "fab-b": {}}))
    center = Center.open(tmp_path / "home", platform)
    for line, version in (("adc", "1"), ("adc", "2"), ("other", "1")):
        publish_model(center, tmp_path, line, version, dataset="aoi@1")
    try:
        yield center
    finally:
        center.close()


def test_deploy_promotes_at_each_serving_site_and_rollback_moves_back(center, monkeypatch):
    legs = fake_site_legs(monkeypatch, center)
    rollout.deploy(center, "adc@1", ["fab-a", "fab-b"], by="ann")
    center.lines.set_alias("adc", "fab-a", "challenger", "2", by="retrain", why="retrain")
    rollout.deploy(center, "adc@2", ["fab-a"], by="bob", why="canary")
    assert center.lines.aliases("adc") == {"fab-a": {"champion": "2", "previous": "1"}, "fab-b": {"champion": "1"}}
    assert aliases.champion(center, "adc", "fab-a") == "2" and aliases.challenger(center, "adc", "fab-a") is None

    rollout.rollback(center, "fab-a", by="carl", why="escapes at the canary")
    assert legs[-1] == ("fab-a", "model/adc@1")
    assert center.lines.aliases("adc", "fab-a") == {"fab-a": {"champion": "1", "previous": "2"}}
    latest = center.lines.moves("adc", "fab-a")[:2]
    assert [(m["alias"], m["from_version"], m["to_version"], m["by"], m["why"]) for m in latest] == [
        ("champion", "2", "1", "carl", "rollback: escapes at the canary"),
        ("previous", "1", "2", "carl", "rollback: escapes at the canary")]
    first = center.lines.moves("adc", "fab-b")[0]
    assert (first["by"], first["why"]) == ("ann", "deploy")

    rollout.rollback(center, "fab-a")  # without a reason or a caller
    m = center.lines.moves("adc", "fab-a")[0]
    assert (m["to_version"], m["by"], m["why"]) == ("2", aliases.DEFAULT_BY, "rollback")


def test_a_failed_site_and_another_line_leave_the_aliases(center, monkeypatch):
    fake_site_legs(monkeypatch, center, failing={"fab-b"})
    with pytest.raises(SiteError):
        rollout.deploy(center, "adc@1", ["fab-a", "fab-b"], by="ann")
    assert center.lines.aliases("adc") == {"fab-a": {"champion": "1"}}
    rollout.deploy(center, "other@1", ["fab-a"], by="ann")
    assert center.lines.aliases("adc") == {"fab-a": {"champion": "1"}}
    assert center.lines.aliases("other") == {"fab-a": {"champion": "1"}}
    listed = {r["ref"]: r["aliases"] for r in rollout.list_models(center)}
    assert listed == {"model/adc@1": {"fab-a": ["champion"]}, "model/adc@2": {},
                      "model/other@1": {"fab-a": ["champion"]}}


def test_line_of_reads_every_spelling():
    assert aliases.line_of("model/adc@3") == ("adc", "3")
    assert aliases.line_of("adc@3") == ("adc", "3")
    assert aliases.line_of("adc") == ("adc", None)
    with pytest.raises(InputError):
        aliases.line_of("dataset/aoi@1")
