"""The network: an Xception backbone with a sex input and a regression head in months.

``build_model`` builds from a ``ModelConfig``; ``MODELS`` is the registry of named
configurations. ``xception`` is the canonical keras.applications.Xception topology
(width 1, 8 middle-flow blocks); ``xception-small`` is the half-width, 4-block
variant that trains at a useful speed on a 2-core CPU; ``xception-half`` has the canonical
8 blocks at half width, ``xception-wide`` the same at three-quarter width and ``xception-grey``
at full width (the canonical network with one greyscale channel); ``xception-wide-deep`` has
16 blocks at three-quarter width. ``grow`` turns a
trained model into a deeper (``deepen``) or wider (``widen``) one that reads the same; ``restack``
revives middle-flow blocks that never grew.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
from keras import layers

AGE_GROUP_EDGES_MONTHS = (24, 72, 120, 168)  # 5 bone-age groups for the optional head
AGE_BINS_MAX_MONTHS = 240.0  # the optional label-distribution head's bins span 0-240 months


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved as config.json beside the weights."""

    name: str = "xception-small"
    width: float = 0.5
    middle_blocks: int = 4
    channels: int = 1
    input_size: int = 224
    head_units: int = 256
    dropout: float = 0.2
    age_group_head: bool = False
    target_mean_months: float = 127.3
    target_std_months: float = 41.2
    # Test-time views: the image zoomed about its centre by each factor (1.0: as is), each
    # read with its mirror; the served bone age is the mean. Set by ``calibrate --zooms``.
    test_zooms: tuple[float, ...] = (1.0,)
    # Trained on radiographs cropped to a square around the hand (``preprocessing.crop_to_hand``),
    # so served the same way.
    hand_crop: bool = False
    # Bins of the label-distribution head (0: none), an auxiliary training output.
    age_bins: int = 0

    def __post_init__(self):
        zooms = tuple(float(z) for z in self.test_zooms)
        if 1.0 not in zooms or any(not 0.5 <= z <= 2.0 for z in zooms):
            raise ValueError(f"test_zooms must include 1.0 and lie within 0.5-2.0, not {zooms}")
        object.__setattr__(self, "test_zooms", zooms)

    def same_network(self, other: ModelConfig) -> bool:
        """True if ``other`` describes the same network with the same target scale, whatever
        its input size and test-time views (the network is convolutional up to its pooling)
        and its dropout rate (training only)."""
        return (
            replace(self, input_size=other.input_size, test_zooms=other.test_zooms, dropout=other.dropout)
            == other
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls(**json.loads(Path(path).read_text()))


MODELS: dict[str, ModelConfig] = {
    "xception": ModelConfig(name="xception", width=1.0, middle_blocks=8, channels=3, input_size=299),
    "xception-small": ModelConfig(),
    "xception-half": ModelConfig(name="xception-half", middle_blocks=8),  # canonical depth, half width
    "xception-wide": ModelConfig(name="xception-wide", width=0.75, middle_blocks=8),
    "xception-grey": ModelConfig(name="xception-grey", width=1.0, middle_blocks=8),  # full width, 1 channel
    "xception-wide-deep": ModelConfig(name="xception-wide-deep", width=0.75, middle_blocks=16),  # 2x depth
    "xception-tiny": ModelConfig(name="xception-tiny", width=0.125, middle_blocks=1, input_size=96),  # tests
}


def _filters(config: ModelConfig, n: int) -> int:
    return max(8, int(round(n * config.width / 8)) * 8)


def _conv_bn(x, filters: int, kernel: int, strides: int = 1, name: str = ""):
    x = layers.Conv2D(filters, kernel, strides=strides, use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _sep_bn(x, filters: int, name: str, relu_first: bool = True):
    if relu_first:
        x = layers.Activation("relu", name=f"{name}_act")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sepconv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _down_block(x, filters: tuple[int, int], name: str, relu_first: bool = True):
    residual = layers.Conv2D(
        filters[1], 1, strides=2, padding="same", use_bias=False, name=f"{name}_res_conv"
    )(x)
    residual = layers.BatchNormalization(name=f"{name}_res_bn")(residual)
    x = _sep_bn(x, filters[0], f"{name}_a", relu_first=relu_first)
    x = _sep_bn(x, filters[1], f"{name}_b")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.add([x, residual], name=f"{name}_add")


def xception_backbone(image, config: ModelConfig):
    """Xception (Chollet 2017) with a width multiplier and a configurable middle flow."""
    f = lambda n: _filters(config, n)  # noqa: E731
    x = layers.Activation("relu", name="entry1_act")(_conv_bn(image, f(32), 3, 2, "entry1"))
    x = layers.Activation("relu", name="entry2_act")(_conv_bn(x, f(64), 3, 1, "entry2"))
    x = _down_block(x, (f(128), f(128)), "entry3", relu_first=False)
    x = _down_block(x, (f(256), f(256)), "entry4")
    x = _down_block(x, (f(728), f(728)), "entry5")
    for i in range(config.middle_blocks):
        residual = x
        for j in "abc":
            x = _sep_bn(x, f(728), f"middle{i}_{j}")
        x = layers.add([x, residual], name=f"middle{i}_add")
    x = _down_block(x, (f(728), f(1024)), "exit1")
    x = layers.SeparableConv2D(f(1536), 3, padding="same", use_bias=False, name="exit2_sepconv")(x)
    x = layers.Activation("relu", name="exit2_act")(layers.BatchNormalization(name="exit2_bn")(x))
    x = layers.SeparableConv2D(f(2048), 3, padding="same", use_bias=False, name="exit3_sepconv")(x)
    x = layers.BatchNormalization(name="exit3_bn")(x)
    return layers.Activation("relu", name="last_conv")(x)  # Grad-CAM target


def feature_layers(config: ModelConfig) -> list[str]:
    """The blocks whose pooled outputs the quality gate compares with training radiographs':
    the last middle-flow block (what the image looks like) and the last convolution (what the
    network reads in it)."""
    middle = f"middle{config.middle_blocks - 1}_add" if config.middle_blocks else "entry5_add"
    return [middle, "last_conv"]


BACKBONE_PREFIXES = ("entry", "middle", "exit")


def backbone_weights(model: keras.Model) -> list:
    """The backbone's variables in the order of keras.applications.Xception's weights."""
    return [w for layer in model.layers if layer.name.startswith(BACKBONE_PREFIXES) for w in layer.weights]


def freeze_before(model: keras.Model, block: str) -> None:
    """Freeze every backbone layer before ``block`` (a layer-name prefix such as ``exit1`` or
    ``middle0``); their batch norms then keep their statistics too."""
    names = [layer.name for layer in model.layers]
    first = next((i for i, name in enumerate(names) if name.startswith(block)), None)
    if first is None or not block.startswith(BACKBONE_PREFIXES):
        raise ValueError(f"{model.name} has no backbone block {block!r} (e.g. entry3, middle0, exit1)")
    for layer in model.layers[:first]:
        layer.trainable = not layer.name.startswith(BACKBONE_PREFIXES)


def build_model(config: ModelConfig) -> keras.Model:
    """Build the multi-input network (inputs ``image`` and ``sex``; 1 = male).

    Output ``bone_age_z`` is the standardised bone age; months = mean + std * z.
    With ``age_group_head`` a second output ``age_group`` gives 5-class probabilities; with
    ``age_bins`` an output ``bone_age_bins`` gives the probability of each bin of bone age
    (``age_bin_centres``).
    """
    image = keras.Input((None, None, config.channels), name="image")
    sex = keras.Input((1,), name="sex")
    features = layers.GlobalAveragePooling2D(name="pool")(xception_backbone(image, config))
    sex_features = layers.Dense(16, activation="relu", name="sex_dense")(sex)
    x = layers.Concatenate(name="concat")([features, sex_features])
    x = layers.Dense(config.head_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = {"bone_age_z": layers.Dense(1, dtype="float32", name="bone_age_z")(x)}
    if config.age_group_head:
        outputs["age_group"] = layers.Dense(
            len(AGE_GROUP_EDGES_MONTHS) + 1, activation="softmax", dtype="float32", name="age_group"
        )(x)
    if config.age_bins:
        outputs["bone_age_bins"] = layers.Dense(
            config.age_bins, activation="softmax", dtype="float32", name="bone_age_bins"
        )(x)
    return keras.Model({"image": image, "sex": sex}, outputs, name=config.name)


def age_bin_centres(bins: int) -> np.ndarray:
    """Bone age (months) at the centre of each of ``bins`` equal bins over 0-240 months."""
    return (np.arange(bins) + 0.5) * AGE_BINS_MAX_MONTHS / bins


def _copy_layers(source: keras.Model, target: keras.Model) -> list:
    """Copy every layer of ``source`` into the layer of that name in ``target``; return the
    target layers that ``source`` has no counterpart for."""
    known = {layer.name: layer for layer in source.layers}
    new = []
    for layer in target.layers:
        if layer.name in known:
            layer.set_weights(known[layer.name].get_weights())
        else:
            new.append(layer)
    return new


def add_heads(source: keras.Model, config: ModelConfig) -> keras.Model:
    """Build ``config`` (``source``'s network with more output heads) from ``source``: every
    layer copied, the new heads' layers left at their random start."""
    target = build_model(config)
    _copy_layers(source, target)
    return target


def deepen(source: keras.Model, config: ModelConfig) -> keras.Model:
    """Build ``config`` (more middle-flow blocks) and carry over every layer of ``source``.

    The new middle blocks start as the identity: their last batch norm has gamma 0, so
    the residual adds nothing and the deeper network reads exactly as ``source`` did
    until training moves it (Goyal et al. 2017, zero-init residual; Chen et al. 2016,
    Net2DeeperNet).
    """
    target = build_model(config)
    for layer in _copy_layers(source, target):
        if layer.name.startswith("middle") and layer.name.endswith("_c_bn"):
            layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
    return target


def restack(source: keras.Model, config: ModelConfig, scale: float) -> keras.Model:
    """Copy the first half of the middle-flow blocks onto the second half, each copy's residual
    scaled by ``scale`` (its last batch norm's gamma and beta).

    Progressive stacking (Gong et al. 2019, ICML): it revives blocks that ``deepen`` started
    as the identity and training never grew, from trained weights rather than random ones.
    The network no longer reads exactly as ``source``: train it afterwards.
    """
    half = config.middle_blocks // 2
    if half == 0 or not 0.0 < scale <= 1.0:
        raise ValueError(f"restacking needs at least 2 middle-flow blocks and a scale in (0, 1], not {scale}")
    target = build_model(config)
    target.set_weights(source.get_weights())
    for i in range(half, 2 * half):
        for layer in target.layers:
            if layer.weights and layer.name.startswith(f"middle{i}_"):
                original = layer.name.replace(f"middle{i}_", f"middle{i - half}_", 1)
                weights = source.get_layer(original).get_weights()
                if layer.name.endswith("_c_bn"):  # [gamma, beta, moving mean, moving variance]
                    weights[0], weights[1] = weights[0] * scale, weights[1] * scale
                layer.set_weights(weights)
    return target


def _channel_groups(config: ModelConfig) -> dict[str, tuple[str, str]]:
    """Each convolution unit (layer-name prefix) -> the channel groups it reads and writes.

    A group is a set of channels that must be widened alike: the outputs of a down block
    and its shortcut, and the whole middle-flow residual stream, are added together.
    """
    units = {"entry1": ("image", "entry1"), "entry2": ("entry1", "entry2")}
    stream = "entry2"
    blocks = ["entry3", "entry4", "entry5", *(f"middle{i}" for i in range(config.middle_blocks)), "exit1"]
    for block in blocks:
        if block.startswith("middle"):
            units |= {
                f"{block}_a": (stream, f"{block}_a"),
                f"{block}_b": (f"{block}_a", f"{block}_b"),
                f"{block}_c": (f"{block}_b", stream),
            }
        else:
            units |= {
                f"{block}_res": (stream, block),
                f"{block}_a": (stream, f"{block}_a"),
                f"{block}_b": (f"{block}_a", block),
            }
            stream = block
    return units | {"exit2": ("exit1", "exit2"), "exit3": ("exit2", "exit3")}


def widen(source: keras.Model, config: ModelConfig, seed: int = 0) -> keras.Model:
    """Build ``config`` (a larger width) and fill it so that it reads exactly as ``source``.

    Net2WiderNet (Chen et al. 2016): every new channel copies a random old one (kernel and
    batch norm); the layers reading a copied channel split its weight among the copies. The
    split is random rather than even, so the copies get different gradients and part ways.
    """
    target = build_model(config)
    rng = np.random.default_rng(seed)
    units = _channel_groups(config)
    old_size = {
        units[n.rsplit("_", 1)[0]][1]: source.get_layer(n).get_weights()[0].shape[0]
        for n in _bn_names(source)
    }
    new_size = {
        units[n.rsplit("_", 1)[0]][1]: target.get_layer(n).get_weights()[0].shape[0]
        for n in _bn_names(target)
    }
    mapping, share = {"image": np.arange(config.channels)}, {"image": np.ones(config.channels)}
    for group, old in old_size.items():
        mapping[group] = np.concatenate([np.arange(old), rng.integers(0, old, new_size[group] - old)])
        weight = rng.uniform(0.5, 1.5, new_size[group])
        share[group] = weight / np.bincount(mapping[group], weights=weight)[mapping[group]]
    for layer in (layer for layer in target.layers if layer.weights):
        weights = source.get_layer(layer.name).get_weights()
        prefix = layer.name.rsplit("_", 1)[0]
        if prefix in units:
            read, write = units[prefix]
            if isinstance(layer, layers.BatchNormalization):
                weights = [w[mapping[write]] for w in weights]
            else:  # Conv2D [kernel] or SeparableConv2D [depthwise, pointwise]: the last reads
                *depthwise, kernel = weights
                depthwise = [w[:, :, mapping[read]] for w in depthwise]
                kernel = kernel[:, :, mapping[read]] * share[read][:, None]
                weights = [*depthwise, kernel[..., mapping[write]]]
        elif layer.name == "head_dense":  # reads [pooled exit3 features, 16 sex features]
            kernel, bias = weights
            old = old_size["exit3"]
            rows = np.concatenate([mapping["exit3"], np.arange(old, kernel.shape[0])])
            scale = np.concatenate([share["exit3"], np.ones(kernel.shape[0] - old)])
            weights = [kernel[rows] * scale[:, None], bias]
        layer.set_weights(weights)
    return target


def _bn_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def grow(source: keras.Model, source_config: ModelConfig, config: ModelConfig) -> keras.Model:
    """``source`` grown into the deeper and/or wider ``config``, reading as ``source`` does."""
    if (
        config.middle_blocks < source_config.middle_blocks
        or config.width < source_config.width
        or config.channels != source_config.channels
    ):
        raise ValueError(
            f"cannot grow {source_config.name} (width {source_config.width}, {source_config.middle_blocks} "
            f"middle blocks, {source_config.channels} channel) into {config.name} (width {config.width}, "
            f"{config.middle_blocks} middle blocks, {config.channels} channels): only deeper or wider"
        )
    deeper = replace(source_config, middle_blocks=config.middle_blocks)
    if deeper.middle_blocks != source_config.middle_blocks:
        source = deepen(source, deeper)
    return widen(source, config) if config.width != source_config.width else source
