import re

import pytest
import torch

from gansweep.config import TrainConfig
from gansweep.errors import ConfigError, UnknownNameError
from gansweep.variants import VARIANTS, Variant, get_variant, register

from conftest import TINY

NINE = ["gan", "cgan", "dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "lsgan", "sngan"]


def test_the_nine_variants_are_registered():
    assert list(VARIANTS) == NINE


@pytest.mark.parametrize("name", NINE)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_shapes_and_ranges(name, shape):
    variant = get_variant(name)
    config = variant.config(**{k: v for k, v in TINY.items() if k != "device"})
    g, d = variant.build(config, shape, 10)
    z = torch.randn(6, config.z_dim)
    labels = torch.arange(6) % 10
    images = g(z, labels)
    assert images.shape == (6, *shape)
    assert images.min() >= -1 and images.max() <= 1
    scores = d(images, labels)
    assert scores.shape == (6,)
    assert torch.isfinite(scores).all()


def test_conditional_g_depends_on_the_label():
    variant = get_variant("cgan")
    g, _ = variant.build(variant.config(hidden=(32,), z_dim=8), (1, 28, 28), 10)
    g.eval()
    z = torch.randn(1, 8).repeat(2, 1)
    out = g(z, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name, field, value", [
    ("gan", "lr", 4e-4), ("gan", "dropout", 0.3), ("dcgan", "lr", 2e-4), ("wgan", "optimizer", "rmsprop"),
    ("wgan", "n_critic", 5), ("wgan", "lr", 5e-5),
    ("wgan-gp", "betas", (0.0, 0.9)), ("wgan-gp", "n_critic", 5), ("sngan", "n_critic", 1),
])
def test_published_defaults(name, field, value):
    assert getattr(get_variant(name).config(), field) == value


def test_given_values_override_and_none_means_not_given():
    config = get_variant("wgan-gp").config(lr=3e-3, n_critic=None)
    assert config.lr == 3e-3 and config.n_critic == 5


@pytest.mark.parametrize("name", ["wgan", "wgan-gp", "cwgan-gp", "sngan"])
def test_label_smoothing_is_rejected_where_it_has_no_meaning(name):
    with pytest.raises(ConfigError, match="label_smoothing has no meaning"):
        get_variant(name).config(label_smoothing=0.1)


@pytest.mark.parametrize("name", ["gan", "dcgan", "lsgan", "cgan"])
def test_label_smoothing_is_accepted_where_d_has_a_real_target(name):
    assert get_variant(name).config(label_smoothing=0.2).label_smoothing == 0.2


def test_unknown_variant_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="did you mean 'wgan-gp'"):
        get_variant("wgan_gp")


@pytest.mark.parametrize("variant, error", [
    (Variant("Bad_Name", "", arch="mlp", loss="hinge"), "kebab-case"),
    (Variant("gan", "", arch="mlp", loss="hinge"), "already registered"),
    (Variant("new-one", "", arch="mlpp", loss="hinge"), "unknown architecture 'mlpp'"),
    (Variant("new-one", "", arch="mlp", loss="hinges"), "unknown loss 'hinges'"),
    (Variant("new-one", "", arch="mlp", loss="hinge", regularizer="gp"), "unknown regularizer"),
    (Variant("new-one", "", arch="mlp", loss="hinge", overrides={"learning_rate": 1.0}), "unknown config fields"),
    (Variant("new-one", "", arch="mlp", loss="hinge", overrides={"lr": -1.0}), "lr must be in (0, 1000]"),
])
def test_register_validates(variant, error):
    with pytest.raises((ValueError, UnknownNameError, ConfigError), match=re.escape(error)):
        register(variant)
    assert "new-one" not in VARIANTS


def test_register_adds_a_variant_from_parts():
    try:
        variant = register(Variant("r1-gan", "non-saturating + R1", arch="mlp", loss="non-saturating",
                                   regularizer="r1", overrides={"lr": 1e-4}))
        assert get_variant("r1-gan").config().lr == 1e-4
        assert variant.regularizer_part.name == "r1"
    finally:
        VARIANTS.pop("r1-gan", None)


@pytest.mark.parametrize("field, value, rule", [
    ("lr", 0.0, "lr must be in (0, 1000]"), ("lr_d", -1e-3, "lr_d must be in (0, 1000]"),
    ("dropout", 1.0, "dropout must be in"),
    ("dropout", -0.1, "dropout must be in"), ("label_smoothing", 0.6, "label_smoothing must be in"),
    ("n_critic", 0, "n_critic must be in [1, 100]"), ("epochs", 0, "epochs must be in [1, 1000000]"),
    ("optimizer", "sgd", "optimizer must be one of"), ("device", "tpu", "device must be one of"),
])
def test_config_range_checks(field, value, rule):
    with pytest.raises(ConfigError, match=re.escape(rule)):
        TrainConfig(**{field: value})


def test_replace_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown training parameter"):
        TrainConfig().replace(learning_rate=1.0)


def test_separate_learning_rates():
    config = TrainConfig(lr=1e-3, lr_d=4e-3)
    assert (config.g_lr, config.d_lr) == (1e-3, 4e-3)


_ARCH_CHANGES = {"hidden": (48,), "batchnorm": False, "maxout": True, "maxout_pieces": 3, "width": 16}


@pytest.mark.parametrize("name", NINE)
def test_a_field_the_variant_does_not_read_changes_nothing_it_builds(name):
    """What a run logs as its params leaves out `unused_fields`: changing one of them must build the very same
    G and D, and changing a field it reads must not."""
    variant = get_variant(name)
    base = variant.config(**{k: v for k, v in TINY.items() if k != "device"})
    unused = variant.unused_fields(base)

    def built(config):
        torch.manual_seed(0)
        g, d = variant.build(config, (1, 28, 28), 10)
        return {**{f"g.{k}": v for k, v in g.state_dict().items()}, **{f"d.{k}": v for k, v in d.state_dict().items()}}

    reference = built(base)
    for field, value in _ARCH_CHANGES.items():
        changed = built(base.replace(**{field: value}))
        same = changed.keys() == reference.keys() and all(
            changed[k].shape == reference[k].shape and torch.equal(changed[k], reference[k]) for k in reference)
        assert same == (field in unused), field


@pytest.mark.parametrize("name, unused", [
    ("gan", {"clip_value", "gp_weight", "r1_gamma"}), ("lsgan", {"clip_value", "gp_weight", "r1_gamma"}),
    ("wgan", {"gp_weight", "r1_gamma", "label_smoothing"}), ("wgan-gp", {"clip_value", "r1_gamma", "label_smoothing"}),
    ("sngan", {"clip_value", "gp_weight", "r1_gamma", "label_smoothing"})])
def test_only_the_variant_s_regularizer_and_a_loss_with_a_real_target_read_their_strengths(name, unused):
    variant = get_variant(name)
    strengths = {"clip_value", "gp_weight", "r1_gamma", "label_smoothing"}
    assert variant.unused_fields(variant.config()) & strengths == unused
