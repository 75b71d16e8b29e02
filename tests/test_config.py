"""Tests of pcattn.config: strict loading, type and range checks, overrides, round trips."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from pcattn.config import (
    ABSENT,
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    check_keys,
    config_diff,
    config_from_dict,
    config_to_dict,
    dump_config,
    format_diff,
    load_config,
)
from pcattn.models import MODELS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _raises(message: str):
    """``pytest.raises`` for a ConfigError whose message contains ``message`` verbatim."""
    return pytest.raises(ConfigError, match=re.escape(message))


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _keyword_options(name: str) -> dict[str, object]:
    """The keyword-only options of model ``name`` and their defaults, read off its signature."""
    params = inspect.signature(MODELS[name].__init__).parameters.values()
    return {
        p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "num_categories"
    }


# --------------------------------------------------------------------------------------------
# the repository's configs


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 2
    assert "default.yaml" in [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    # what the file says is what the config holds
    assert cfg.model.name == raw["model"]["name"]
    assert cfg.model.name in MODELS
    assert set(cfg.model.options) == set(raw["model"]) - {"name"}
    assert config_to_dict(cfg)["model"] == raw["model"]
    for section in ("data", "optim", "schedule", "train", "run"):
        for key, value in (raw.get(section) or {}).items():
            if key == "augment":
                for k, v in value.items():
                    assert getattr(cfg.data.augment, k) == v, f"data.augment.{k}"
            else:
                assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    # dump -> YAML -> config is the identity
    text = dump_config(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    out = tmp_path / "resolved.yaml"
    assert dump_config(cfg, out) == text
    assert out.read_text() == text
    assert load_config(out) == cfg


def test_defaults_round_trip():
    cfg = Config()
    assert load_config(None) == cfg
    assert config_from_dict({}) == cfg
    assert config_from_dict(None) == cfg
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert config_to_dict(cfg)["model"] == {"name": "attention_net_cls"}


def test_config_to_dict_holds_plain_lists():
    cfg = config_from_dict(
        {"model": {"name": "pointnet2_cls", "sa_channels": [[8, 8], [16]], "radii": [1, 2]}}
    )
    assert cfg.model.options["sa_channels"] == ((8, 8), (16,))
    raw = config_to_dict(cfg)
    assert raw["model"] == {
        "name": "pointnet2_cls",
        "sa_channels": [[8, 8], [16]],
        "radii": [1.0, 2.0],
    }
    assert type(raw["model"]["sa_channels"][0]) is list
    assert raw["optim"]["betas"] == [0.9, 0.999]
    assert raw["data"]["augment"]["scale"] == [0.8, 1.25]


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
    assert load_config(_write(tmp_path, "# only a comment\n", "c.yaml")) == Config()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(f"config file not found: {path}")):
        load_config(path)


# --------------------------------------------------------------------------------------------
# unknown names


def test_unknown_section_suggests():
    with _raises("unknown section 'trian'; did you mean 'train'?"):
        config_from_dict({"trian": {"epochs": 3}})


def test_unknown_key_suggests():
    with _raises("unknown key 'train.epoch'; did you mean 'epochs'?"):
        config_from_dict({"train": {"epoch": 3}})
    with _raises("unknown key 'data.augment.rotat'; did you mean 'rotate'?"):
        config_from_dict({"data": {"augment": {"rotat": "x"}}})


def test_unknown_key_without_close_match_lists_known_keys():
    known = ", ".join(f.name for f in dataclasses.fields(type(Config().schedule)))
    with _raises(f"unknown key 'schedule.zzz'; known keys: {known}"):
        config_from_dict({"schedule": {"zzz": 1}})


def test_unknown_model_option_suggests():
    with _raises(
        "unknown key 'model.chanels' for model 'attention_net_cls'; did you mean 'channels'?"
    ):
        config_from_dict({"model": {"chanels": [8, 16]}})


def test_unknown_model_name_suggests():
    with _raises("model.name 'dgcnn_clss' is not a model; did you mean 'dgcnn_cls'?"):
        config_from_dict({"model": {"name": "dgcnn_clss"}})
    with _raises("model.name must be a string, got 3"):
        config_from_dict({"model": {"name": 3}})


def test_option_of_another_model_is_rejected_naming_the_model():
    # ``operators`` belongs to attention_net_cls, not to DGCNN
    assert "operators" in _keyword_options("attention_net_cls")
    known = ", ".join(_keyword_options("dgcnn_cls"))
    with _raises(f"unknown key 'model.operators' for model 'dgcnn_cls'; known keys: {known}"):
        config_from_dict({"model": {"name": "dgcnn_cls", "operators": ["gat"]}})
    # ``num_categories`` comes from the data, not from the config
    with _raises("unknown key 'model.num_categories' for model 'attention_net_seg'"):
        config_from_dict({"model": {"name": "attention_net_seg", "num_categories": 16}})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_accepts_its_own_defaults(name):
    """Each keyword option of each model, with its default, passes the signature check."""
    defaults = _keyword_options(name)
    assert defaults, name
    cfg = config_from_dict({"model": {"name": name, **defaults}})
    assert cfg.model == ModelConfig(name=name, options=defaults)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_error_inside_a_file_names_the_file(tmp_path):
    path = _write(tmp_path, "train:\n  epoch: 3\n", "my_experiment.yaml")
    with _raises(f"{path}: unknown key 'train.epoch'; did you mean 'epochs'?"):
        load_config(path)
    path = _write(tmp_path, "model:\n  name: dgcnn_cls\n  kk: 3\n", "model_typo.yaml")
    with _raises(f"{path}: unknown key 'model.kk' for model 'dgcnn_cls'; did you mean 'k'?"):
        load_config(path)
    path = _write(tmp_path, "optim:\n  lr: -1.0\n", "bad_lr.yaml")
    with _raises(f"{path}: optim.lr must be > 0, got -1.0"):
        load_config(path)
    path = _write(tmp_path, "- data\n- model\n", "a_list.yaml")
    with _raises(f"{path}: the config must be a mapping of sections, got list"):
        load_config(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    text = "data:\n  name: synthetic\ntrain:\n  epochs: 3\n  batch_size: 4: 5\nrun:\n  out: x\n"
    path = _write(tmp_path, text, "broken.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}, line 5, column 16: not valid YAML: mapping values are not allowed here"
    )


# --------------------------------------------------------------------------------------------
# types


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # ints refused for bools
        ({"train": {"amp": 1}}, "train.amp must be true or false, got 1"),
        (
            {"data": {"augment": {"shuffle": 0}}},
            "data.augment.shuffle must be true or false, got 0",
        ),
        ({"run": {"progress": "yes"}}, "run.progress must be true or false, got 'yes'"),
        # bools and floats refused for ints
        ({"train": {"epochs": True}}, "train.epochs must be an integer, got True"),
        ({"train": {"batch_size": 8.0}}, "train.batch_size must be an integer, got 8.0"),
        # strings and bools refused for numbers
        ({"optim": {"lr": "fast"}}, "optim.lr must be a number, got 'fast'"),
        ({"optim": {"lr": True}}, "optim.lr must be a number, got True"),
        ({"train": {"epochs": "3"}}, "train.epochs must be an integer, got '3'"),
        ({"run": {"out": 3}}, "run.out must be a string, got 3"),
        # lists, and their elements
        ({"optim": {"betas": 0.9}}, "optim.betas must be a list, got 0.9"),
        ({"optim": {"betas": "ab"}}, "optim.betas must be a list, got 'ab'"),
        ({"optim": {"betas": [0.9, "a"]}}, "optim.betas[1] must be a number, got 'a'"),
        ({"data": {"categories": [1, 2]}}, "data.categories must be list[str] | None, got [1, 2]"),
        (
            {"data": {"augment": {"scale": [0.8, "x"]}}},
            "data.augment.scale must be list[float] | None, got [0.8, 'x']",
        ),
        # null only where the type allows it
        ({"train": {"epochs": None}}, "train.epochs must be an integer, got None"),
        ({"optim": {"betas": None}}, "optim.betas must be a list, got None"),
        ({"data": {"name": None}}, "data.name must be a string, got None"),
        ({"data": {"root": 3}}, "data.root must be str | None, got 3"),
        # sections must be mappings
        ({"train": 3}, "train must be a mapping, got 3"),
        ({"model": [1]}, "model must be a mapping, got [1]"),
        # model options are typed by the model's signature
        ({"model": {"name": "dgcnn_cls", "k": True}}, "model.k must be an integer, got True"),
        ({"model": {"name": "dgcnn_cls", "k": 2.5}}, "model.k must be an integer, got 2.5"),
        (
            {"model": {"name": "dgcnn_cls", "channels": [8, "a"]}},
            "model.channels[1] must be an integer, got 'a'",
        ),
        ({"model": {"name": "dgcnn_cls", "channels": 8}}, "model.channels must be a list, got 8"),
        ({"model": {"operators": "gat"}}, "model.operators must be a list, got 'gat'"),
        ({"model": {"dropout": "half"}}, "model.dropout must be a number, got 'half'"),
    ],
)
def test_type_errors(raw, message):
    with _raises(message):
        config_from_dict(raw)


def test_null_where_allowed():
    cfg = config_from_dict(
        {"data": {"root": None, "categories": None, "augment": {"rotate": None, "scale": None}}}
    )
    assert cfg.data.root is None
    assert cfg.data.categories is None
    assert cfg.data.augment.rotate is None
    assert cfg.data.augment.scale is None
    # an empty section is the defaults
    assert config_from_dict({"train": None, "model": None}) == Config()


def test_ints_accepted_for_floats():
    cfg = config_from_dict(
        {
            "optim": {"lr": 1, "betas": [0, 0]},
            "schedule": {"warmup_epochs": 2},
            "data": {"augment": {"scale": [1, 2], "jitter": 0}},
            "model": {"name": "pointnet2_cls", "radii": [1, 2], "dropout": 0},
        }
    )
    for value in (
        cfg.optim.lr,
        *cfg.optim.betas,
        cfg.schedule.warmup_epochs,
        *cfg.data.augment.scale,
        cfg.data.augment.jitter,
        *cfg.model.options["radii"],
        cfg.model.options["dropout"],
    ):
        assert type(value) is float
    assert cfg.optim.lr == 1.0
    assert cfg.optim.betas == [0.0, 0.0]
    assert cfg.schedule.warmup_epochs == 2.0
    assert cfg.data.augment.scale == [1.0, 2.0]
    assert cfg.model.options["radii"] == (1.0, 2.0)


def test_list_fields_stay_lists_and_tuple_options_become_tuples():
    cfg = config_from_dict(
        {
            "optim": {"betas": (0.5, 0.6)},
            "data": {"categories": ["Airplane", "Chair"]},
            "model": {"name": "attention_net_cls", "channels": [8, 16], "operators": ["gat"]},
        }
    )
    assert type(cfg.optim.betas) is list
    assert type(cfg.data.categories) is list
    assert cfg.model.options == {"channels": (8, 16), "operators": ("gat",)}
    assert type(cfg.model.options["channels"]) is tuple
    cfg = config_from_dict({"model": {"name": "dgcnn_cls", "channels": [8, 16], "k": 5}})
    assert cfg.model.options == {"channels": (8, 16), "k": 5}
    assert type(cfg.model.options["channels"]) is tuple
    cfg = config_from_dict({"model": {"name": "pointnet2_seg", "fp_channels": [[4], [4, 4]]}})
    assert cfg.model.options["fp_channels"] == ((4,), (4, 4))
    assert all(type(t) is tuple for t in cfg.model.options["fp_channels"])


# --------------------------------------------------------------------------------------------
# choices and ranges


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"name": "imagenet"}},
            "data.name must be one of synthetic, modelnet, shapenetpart, digits, karate, "
            "got 'imagenet'",
        ),
        ({"optim": {"name": "adam"}}, "optim.name must be one of adamw, sgd, got 'adam'"),
        (
            {"data": {"augment": {"rotate": "w"}}},
            "data.augment.rotate must be one of null, x, y, z, so3, got 'w'",
        ),
        ({"data": {"classes": 20}}, "data.classes must be one of 40, 10, got 20"),
        (
            {"data": {"task": "detection"}},
            "data.task must be one of classification, segmentation, got 'detection'",
        ),
        ({"run": {"device": "gpu"}}, "run.device must be one of auto, cpu, cuda, got 'gpu'"),
        ({"optim": {"lr": 0}}, "optim.lr must be > 0, got 0.0"),
        ({"optim": {"lr": -0.1}}, "optim.lr must be > 0, got -0.1"),
        ({"train": {"epochs": 0}}, "train.epochs must be > 0, got 0"),
        ({"train": {"batch_size": -4}}, "train.batch_size must be > 0, got -4"),
        ({"train": {"num_workers": -1}}, "train.num_workers must be >= 0, got -1"),
        ({"optim": {"weight_decay": -0.01}}, "optim.weight_decay must be >= 0, got -0.01"),
        ({"data": {"augment": {"jitter": -0.5}}}, "data.augment.jitter must be >= 0, got -0.5"),
        ({"schedule": {"min_lr": -1}}, "schedule.min_lr must be >= 0, got -1.0"),
    ],
)
def test_choices_and_ranges(raw, message):
    with _raises(message):
        config_from_dict(raw)


def test_range_boundaries_accepted():
    cfg = config_from_dict(
        {
            "train": {"epochs": 1, "num_workers": 0, "max_steps": 0},
            "optim": {"weight_decay": 0, "momentum": 0},
            "data": {"num_points": 0, "augment": {"rotate": "so3", "jitter": 0}},
        }
    )
    assert (cfg.train.epochs, cfg.train.num_workers, cfg.optim.weight_decay) == (1, 0, 0.0)
    assert cfg.data.augment.rotate == "so3"


# --------------------------------------------------------------------------------------------
# overrides


def test_override_changes_only_that_field():
    cfg = apply_overrides(Config(), ["train.epochs=3"])
    expected = Config()
    expected.train = dataclasses.replace(expected.train, epochs=3)
    assert cfg == expected
    assert type(cfg.train.epochs) is int
    # the leading dashes of a command-line flag are dropped
    assert apply_overrides(Config(), ["--train.epochs=3"]) == expected


def test_override_values_are_typed():
    cfg = apply_overrides(
        Config(),
        ["model.channels=[8,16]", "optim.lr=0.5", "train.amp=false", "data.augment.rotate=z"],
    )
    assert cfg.model.options == {"channels": (8, 16)}
    assert cfg.optim.lr == 0.5
    assert cfg.train.amp is False
    assert cfg.data.augment.rotate == "z"
    # an int for a float field becomes a float
    cfg = apply_overrides(Config(), ["optim.lr=1"])
    assert type(cfg.optim.lr) is float
    with _raises("train.epochs must be an integer, got 'three'"):
        apply_overrides(Config(), ["train.epochs=three"])
    with _raises("train.amp must be true or false, got 1"):
        apply_overrides(Config(), ["train.amp=1"])


def test_override_null(tmp_path):
    base = load_config(_write(tmp_path, "data:\n  root: somewhere\n"))
    assert base.data.root == "somewhere"
    assert apply_overrides(base, ["data.root=null"]).data.root is None
    assert apply_overrides(base, ["data.root="]).data.root is None
    with _raises("train.epochs must be an integer, got None"):
        apply_overrides(base, ["train.epochs=null"])


def test_override_unknown_key_suggests():
    with _raises("override 'train.epoch=3': unknown key 'train.epoch'; did you mean 'epochs'?"):
        apply_overrides(Config(), ["train.epoch=3"])
    with _raises("override 'trian.epochs=3': unknown key 'trian'; did you mean 'train'?"):
        apply_overrides(Config(), ["trian.epochs=3"])
    with _raises(
        "override 'data.agument.rotate=x': unknown key 'data.agument'; did you mean 'augment'?"
    ):
        apply_overrides(Config(), ["data.agument.rotate=x"])
    with _raises(
        "unknown key 'model.chanels' for model 'attention_net_cls'; did you mean 'channels'?"
    ):
        apply_overrides(Config(), ["model.chanels=[8]"])


@pytest.mark.parametrize("item", ["epochs=3", "train.epochs", "train-epochs=3", "=3"])
def test_malformed_override(item):
    with _raises(f"override {item!r} must look like section.key=value"):
        apply_overrides(Config(), [item])


def test_override_through_a_value_is_refused():
    with _raises("override 'train.epochs.x=3': train.epochs is not a section"):
        apply_overrides(Config(), ["train.epochs.x=3"])


def test_overrides_apply_after_the_file_in_order(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 200\n  batch_size: 8\noptim:\n  lr: 0.05\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == 8  # from the file, untouched
    assert cfg.optim.lr == 0.05
    assert load_config(path, ["train.epochs=3", "train.epochs=5"]).train.epochs == 5
    # the file alone is unchanged
    assert load_config(path).train.epochs == 200


def test_override_switches_model():
    cfg = apply_overrides(Config(), ["model.name=dgcnn_cls", "model.channels=[8,16]", "model.k=4"])
    assert cfg.model == ModelConfig(name="dgcnn_cls", options={"channels": (8, 16), "k": 4})
    # options of the previous model are checked against the new model's signature
    base = load_config(CONFIGS[[p.name for p in CONFIGS].index("default.yaml")])
    assert "operators" in base.model.options
    known = ", ".join(_keyword_options("point_transformer_cls"))
    with _raises(
        f"unknown key 'model.operators' for model 'point_transformer_cls'; known keys: {known}"
    ):
        apply_overrides(base, ["model.name=point_transformer_cls"])
    # an option only the new model has is accepted once the name switches
    assert "heads" not in _keyword_options("point_transformer_cls")
    cfg = apply_overrides(Config(), ["model.name=graph_node_classifier", "model.heads=2"])
    assert cfg.model == ModelConfig(name="graph_node_classifier", options={"heads": 2})
    with _raises("unknown key 'model.heads' for model 'dgcnn_cls'"):
        apply_overrides(Config(), ["model.name=dgcnn_cls", "model.heads=2"])


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; float fields take it as the number it spells
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n")
    assert load_config(path).optim.lr == 1e-3
    assert load_config(None, ["optim.lr=5e-4"]).optim.lr == 5e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.augment.scale=[1.2, 0.8]", "must be [low, high] with 0 < low <= high"),
        ("data.augment.scale=[0.8]", "data.augment.scale must be a list of 2 numbers"),
        ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers in [0, 1)"),
        ("data.augment.dropout=1.0", "data.augment.dropout must be in [0, 1), got 1.0"),
    ],
)
def test_pairs_and_ratios_are_range_checked(override, message):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: ") + ".*"):
        load_config(None, [override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_a_failing_override_is_named_alone():
    with pytest.raises(ConfigError, match=re.escape("override 'train.epochs=x': train.epochs")):
        load_config(None, ["train.batch_size=4", "train.epochs=x", "optim.lr=0.1"])


# --------------------------------------------------------------------------------------------
# what YAML would take silently: repeated keys, other encodings, non-finite numbers


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "data:\n  name: synthetic\ntrain:\n  epochs: 3\ndata:\n  seed: 1\n",
            "line 5, column 1: not valid YAML: duplicate key 'data' (first at line 1)",
        ),
        (
            "data:\n  augment:\n    jitter: 0.1\n    shuffle: true\n    jitter: 0.2\n",
            "line 5, column 5: not valid YAML: duplicate key 'jitter' (first at line 3)",
        ),
        (
            "model:\n  name: dgcnn_cls\n  k: 4\noptim: {lr: 0.1, lr: 0.2}\n",
            "line 4, column 18: not valid YAML: duplicate key 'lr' (first at line 4)",
        ),
    ],
)
def test_a_repeated_key_is_refused_at_any_depth(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}, {message}"
    # the plain loader would have kept the last value without a word
    assert yaml.safe_load(text) is not None


def test_keys_merged_in_may_be_overridden(tmp_path):
    # YAML merging: the mapping's own key wins over the merged one; not a repeated key
    text = "optim:\n  <<: {lr: 0.1, momentum: 0.5}\n  lr: 0.2\n"
    cfg = load_config(_write(tmp_path, text))
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.2, 0.5)


def test_a_repeated_key_in_an_override_is_refused():
    with _raises(
        "override 'data.augment={jitter: 0.1, jitter: 0.2}': '{jitter: 0.1, jitter: 0.2}' is not "
        "a YAML value (duplicate key 'jitter' (first at line 1))"
    ):
        apply_overrides(Config(), ["data.augment={jitter: 0.1, jitter: 0.2}"])


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  epochs: 2\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: not UTF-8 text: byte 0xe9 at offset 24 (line 3); save the file as UTF-8"
    )
    # UTF-8, with or without a byte order mark, reads
    path.write_bytes("\ufefftrain:\n  epochs: 2\n# café\n".encode())
    assert load_config(path).train.epochs == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("optim.weight_decay=.inf", "optim.weight_decay must be a finite number, got inf"),
        ("schedule.warmup_epochs=.inf", "schedule.warmup_epochs must be a finite number, got inf"),
        ("train.grad_clip=-.inf", "train.grad_clip must be a finite number, got -inf"),
        ("data.augment.jitter=.nan", "data.augment.jitter must be a finite number, got nan"),
        (
            "data.augment.scale=[0.8, .inf]",
            "data.augment.scale must be list[float] | None, got [0.8, inf]",
        ),
        ("optim.lr=1e999", "optim.lr must be a finite number, got inf"),  # YAML reads inf
        (f"optim.lr={10**400}", "optim.lr must be a finite number, got 1000"),  # an int
        ("model.dropout=.nan", "model.dropout must be a finite number, got nan"),
        ("train.label_smoothing=1.5", "train.label_smoothing must be in [0, 1], got 1.5"),
        ("schedule.min_lr=2", "schedule.min_lr must be in [0, 1], got 2.0"),
        ("schedule.warmup_start=1.01", "schedule.warmup_start must be in [0, 1], got 1.01"),
        ("optim.momentum=1.0", "optim.momentum must be in [0, 1), got 1.0"),
        (
            "train.seed=9223372036854775808",
            "train.seed must be <= 2**63 - 1 = 9223372036854775807, got 9223372036854775808",
        ),
    ],
)
def test_numbers_must_be_finite_and_in_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: {message}")):
        load_config(None, [override])


def test_number_range_boundaries_accepted():
    import torch

    cfg = load_config(
        None,
        [
            "train.label_smoothing=1",
            "schedule.min_lr=1",
            "schedule.warmup_start=0",
            "optim.momentum=0.999",
            "train.seed=9223372036854775807",
        ],
    )
    assert (cfg.train.label_smoothing, cfg.schedule.min_lr, cfg.optim.momentum) == (1.0, 1.0, 0.999)
    # the largest seed, and the per-epoch seeds derived from it, are seeds torch accepts
    torch.manual_seed(cfg.train.seed)
    torch.Generator().manual_seed(cfg.train.seed + 10**6)


def test_dump_config_failing_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "config.yaml"
    dump_config(Config(), path)
    before = path.read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=re.escape(f"cannot write {path}: No space left on device")):
        dump_config(apply_overrides(Config(), ["train.epochs=3"]), path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# --------------------------------------------------------------------------------------------
# comparing configs (what --resume checks)


def test_config_diff_lists_every_changed_key_in_config_order():
    a = Config()
    b = apply_overrides(a, ["optim.lr=0.2", "data.augment.jitter=0.01", "train.epochs=3"])
    assert config_diff(a, a) == []
    assert config_diff(a, b) == [
        ("data.augment.jitter", 0.0, 0.01),
        ("optim.lr", 0.001, 0.2),
        ("train.epochs", 10, 3),
    ]
    assert format_diff(config_diff(a, b)[1:2]) == "optim.lr: 0.001 (checkpoint) -> 0.2 (requested)"
    c = apply_overrides(a, ["data.root=somewhere", "data.categories=[Chair]"])
    assert format_diff(config_diff(a, c), "old", "new") == (
        "data.root: null (old) -> 'somewhere' (new); data.categories: null (old) -> ['Chair'] (new)"
    )


def test_config_diff_counts_model_options_at_their_values_in_force():
    k = _keyword_options("dgcnn_cls")["k"]
    implicit = config_from_dict({"model": {"name": "dgcnn_cls"}})
    explicit = config_from_dict({"model": {"name": "dgcnn_cls", "k": k}})
    assert config_diff(implicit, explicit) == []  # the default written out is no change
    other = config_from_dict({"model": {"name": "dgcnn_cls", "k": k + 1}})
    assert config_diff(implicit, other) == [("model.k", k, k + 1)]
    # another model: its name, and the options only one of the two has
    pt = config_from_dict({"model": {"name": "point_transformer_cls"}})
    diff = dict((key, (a, b)) for key, a, b in config_diff(implicit, pt))
    assert diff["model.name"] == ("dgcnn_cls", "point_transformer_cls")
    only_dgcnn = set(_keyword_options("dgcnn_cls")) - set(_keyword_options("point_transformer_cls"))
    for name in only_dgcnn:
        assert diff[f"model.{name}"][1] is ABSENT
    assert "(absent) (requested)" in format_diff(config_diff(implicit, pt))


def test_check_keys_names_the_closest_key():
    check_keys(["train.epochs", "model.k", "data.augment.jitter"], [Config()], "--x")
    with _raises("--resume-override: unknown key 'train.epoch'; did you mean 'train.epochs'?"):
        check_keys(["train.epoch"], [Config()], "--resume-override")
    with _raises("--x: unknown key 'optim.lrr'; did you mean 'optim.lr'?"):
        check_keys(["optim.lrr"], [Config()], "--x")
