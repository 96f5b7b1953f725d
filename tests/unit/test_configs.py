from __future__ import annotations

import pytest

from configs import ConfigError, InputError, LocalSiteConfig, ServeUserConfig, load_defaults
from configs.loader import validate
from configs.platform import load_platform
from configs.yaml_files import read_yaml, read_yaml_documents


def test_defaults_file_parses_into_the_models():
    d = load_defaults()
    assert d.site.num_cpus >= 4  # Ray Data + 2 Train workers deadlock at 2 logical CPUs
    cfg = d.train_config(dataset="file:///d", output="file:///m")
    assert cfg.checkpoint_path == "file:///m-checkpoints"
    assert d.train_config(dataset="a", output="b", epochs=3).epochs == 3


def test_unknown_key_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("site:\n  name: fab-a\n  num_cpu: 4\n")
    with pytest.raises(ConfigError, match=r"site\.num_cpu: Extra inputs are not permitted"):
        load_defaults(f)


def test_train_section_is_checked_and_cannot_fix_dataset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  dataset: x\n")
    with pytest.raises(ConfigError, match="given per run"):
        load_defaults(f)
    f.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_defaults(f)


def test_invalid_yaml_and_missing_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("site: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_defaults(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_defaults(tmp_path / "nope.yaml")


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("center:\n  store: {url: x}\nsites:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"Platform file .*p\.yaml is not valid YAML at line 5, column 1"):
        load_platform(f)
    f.write_text("kind: A\n---\n---\nkind: B\n")
    assert read_yaml_documents(f) == [{"kind": "A"}, {"kind": "B"}]
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") is None
    with pytest.raises(InputError, match="Manifest file .* does not exist"):
        read_yaml(tmp_path / "gone.yaml", "Manifest file", error=InputError)


@pytest.mark.parametrize("name", ["Fab-A", "fab_a", "-fab", "x" * 41, ""])
def test_site_names_must_be_dns_labels(name):
    with pytest.raises(ConfigError, match="DNS label"):
        validate(LocalSiteConfig, {"name": name}, "site")


def test_serve_sides_cross_field_rule():
    with pytest.raises(ConfigError, match="min_side=64, max_side=32"):
        validate(ServeUserConfig, {"min_side": 64, "max_side": 32}, "user_config")


def test_error_renders_one_line_and_json():
    from configs import InputError

    e = InputError("Bad thing.", allowed="good things", hint="Do it right.", field="x")
    assert str(e) == "Bad thing. Allowed: good things. Do it right."
    assert e.to_json() == {"error": "InputError", "detail": "Bad thing.", "allowed": "good things",
                           "hint": "Do it right.", "field": "x"}
    assert e.http_status == 400


def test_train_and_tune_configs_share_a_base():
    from pydantic import ValidationError

    from configs.models import TrainConfig, TrainingJobConfig, TuneConfig

    assert {"dataset", "output", "model_name", "model_version", "site", "artifact_store", "lineage"} <= set(
        TrainingJobConfig.model_fields
    )
    for model, run in ((TrainConfig, "adc"), (TuneConfig, "adc-tune")):
        assert issubclass(model, TrainingJobConfig)
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            model(dataset="d", output="o", epoch=3)
        assert model(dataset="d", output="/").run == run
        assert model(dataset="d", output="s3://b/m1", run_name=None).run == "m1"
    assert TrainConfig(dataset="d", output="o").epochs == 12 and TuneConfig(dataset="d", output="o").epochs == 6
