"""The Multi-Task Network (MTN): a shared trunk and one branch per attribute.

``MTN`` is a Keras 3 functional model. It takes float32 images in [0, 255]
(normalisation happens inside the model, so an exported graph needs only
decode + crop + resize) and returns a dict: one softmax output per attribute,
keyed by the attribute's name, plus ``"embedding"``. A ``multilabel``
attribute (a group of binary attributes, ``kinds``) gets ``N`` independent
sigmoid outputs instead: the same branch, ``Dense(N)`` then a float32
sigmoid.

Trunks:
    ``nin``: the poster's NIN trunk (SPEC §3). Choices the poster leaves open,
        made here: every conv is conv -> batch norm -> ReLU with "same"
        padding; both 3x3 max pools have stride 2; the trunk ends with global
        average pooling, as NIN networks do (flattening 7x7x512 into nine
        FC-1024 branches would cost 231M parameters); input 224 px for the
        ``paper`` preset. Dropout sits after each branch FC layer.
    ``resnet50``, ``efficientnetv2b0``, ``mobilenetv3small``,
        ``mobilenetv3large``: ImageNet
        backbones from ``keras.applications`` under the same branches, with
        ``weights=None | "imagenet" | path``.

Heads: ``branches`` (the MTN: one 3-layer FC branch per attribute) or
``joint`` (JAN, the paper's single-network baseline, SPEC §5: one shared
3-layer branch whose last layer scores every value of every attribute,
each attribute's slice under its own softmax; its hidden layers have the
width of one MTN branch).

Embedding (the cross-domain loss's ``f(I)``): the concatenation of every
branch's second FC layer (JAN: its one branch's). The street stage fine-tunes only the FC branches
by default (SPEC §2), so the embedding must be computed by those layers, or
the cross-domain loss would have nothing to move; the second FC layer is the
last representation shared by all of a branch's values. It is computed
without dropout (the second FC layer is called a second time, on the first
one's output before its dropout), so in training it is the same function of
the image as in inference.
"""

import keras

from mtct_tf import attributes as attributes_lib

# Per-preset choices. ``width`` scales every trunk conv's channel count.
PRESETS = {
    "paper": {"image_size": 224, "width": 1.0, "fc_units": 1024,
              "dropout": 0.5},
    "small": {"image_size": 64, "width": 0.25, "fc_units": 128,
              "dropout": 0.2},
    # Only for unit tests: 16-32 px inputs, a few thousand parameters.
    "tiny": {"image_size": 32, "width": 0.0625, "fc_units": 16,
             "dropout": 0.0},
}

# The poster's table: (layer name, kernel, channels, stride); "pool" rows
# are 3x3 max pools with stride 2.
NIN_LAYERS = (
    ("conv1", 7, 96, 2), ("conv1_1", 1, 96, 1), ("conv1_2", 1, 96, 1),
    ("pool1", 3, None, 2),
    ("conv2", 5, 256, 2), ("conv2_1", 1, 256, 1), ("conv2_2", 1, 256, 1),
    ("conv3", 3, 512, 1), ("conv3_1", 1, 512, 1), ("conv3_2", 1, 512, 1),
    ("conv4", 3, 1024, 1), ("conv4_1", 1, 1024, 1), ("conv4_2", 1, 512, 1),
    ("conv4_3", 1, 384, 1),
    ("conv5", 3, 512, 2), ("conv5_1", 1, 512, 1), ("conv5_2", 1, 512, 1),
    ("pool5", 3, None, 2),
)

# Backbone name -> (constructor, normalisation mode the backbone expects).
APPLICATIONS = {
    "resnet50": ("ResNet50", "caffe"),
    "efficientnetv2b0": ("EfficientNetV2B0", "none"),  # Rescales inside.
    "mobilenetv3small": ("MobileNetV3Small", "none"),  # Rescales inside.
    "mobilenetv3large": ("MobileNetV3Large", "none"),  # Rescales inside.
}
BACKBONES = ("nin",) + tuple(APPLICATIONS)
# Output heads: one branch per attribute (MTN) or one joint branch (JAN).
HEADS = ("branches", "joint")
JOINT = "joint"  # The joint branch's layer-name prefix.
# Batch-norm momentum of every trunk (see ``_application_trunk``).
BACKBONE_BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="mtct_tf")
class Normalize(keras.layers.Layer):
    """Maps [0, 255] RGB pixels to what a trunk expects.

    Modes: ``"tf"`` -> [-1, 1]; ``"caffe"`` -> BGR minus the ImageNet means
    (ResNet50's ``preprocess_input``); ``"none"`` -> unchanged.
    """

    MODES = ("tf", "caffe", "none")

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(
                f"`mode` must be one of {self.MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = x[..., ::-1]
            mean = keras.ops.convert_to_tensor(
                [103.939, 116.779, 123.68], dtype=x.dtype
            )
            return x - mean
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mtct_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``BatchNormalization`` computed by TensorFlow's fused kernel.

    Keras 3 normalises with separate moments, subtract, multiply and add
    ops (in float32 even under ``mixed_bfloat16``), each a full pass over
    the activations and another in the backward pass; ``FusedBatchNormV3``
    (oneDNN) does it in one pass each way, on bfloat16 activations
    directly (measured in docs/BENCHMARKS.md). Same weights, config and results as the Keras layer (the moving variance is
    the biased batch variance, as Keras updates it); masks, renorm,
    synchronised statistics and other backends use the Keras code.
    """

    def _fusable(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None
                and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.center and self.scale)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
            # The kernel returns the unbiased variance; Keras keeps the
            # biased one.
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(
                self.moving_variance * m + variance * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


def _elementwise_dtype():
    """The dtype policy of the trunk's batch norm, ReLU and max-pooling.

    Under ``mixed_bfloat16`` they run in float32 and only the convolutions
    in bfloat16: TensorFlow's CPU kernels for bfloat16 batch norm, ReLU,
    max-pooling and their gradients are slower than the float32 ones
    (docs/BENCHMARKS.md, What was tried).
    ``None`` (the global policy) otherwise: float16 on GPUs is not slowed.
    """
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype == "bfloat16" else None


@keras.saving.register_keras_serializable(package="mtct_tf")
class ValueSlice(keras.layers.Layer):
    """One attribute's slice ``[start, start + size)`` of the joint head's
    logits (JAN). A layer, not a ``Lambda``: it loads in safe mode."""

    def __init__(self, start, size, **kwargs):
        super().__init__(**kwargs)
        self.start, self.size = int(start), int(size)

    def call(self, logits):
        return logits[:, self.start:self.start + self.size]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size)

    def get_config(self):
        return {**super().get_config(), "start": self.start,
                "size": self.size}


def _nin_trunk(x, width):
    """Applies the NIN trunk; returns the pooled feature vector."""
    dtype = _elementwise_dtype()
    for name, kernel, channels, stride in NIN_LAYERS:
        if channels is None:
            x = keras.layers.MaxPooling2D(
                kernel, strides=stride, padding="same", name=name,
                dtype=dtype,
            )(x)
            continue
        x = keras.layers.Conv2D(
            max(4, int(round(channels * width))), kernel, strides=stride,
            padding="same", use_bias=False, name=name,
        )(x)
        # momentum 0.9: moving statistics must settle within short CPU runs.
        x = FusedBatchNormalization(momentum=BACKBONE_BN_MOMENTUM,
                                    name=f"{name}_bn",
                                    dtype=dtype)(x)
        x = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)
    return keras.layers.GlobalAveragePooling2D(name="trunk_pool")(x)


def _application_trunk(x, backbone, weights, image_size):
    constructor_name, _ = APPLICATIONS[backbone]
    constructor = getattr(keras.applications, constructor_name)
    kwargs = {}
    if backbone != "resnet50":
        kwargs["include_preprocessing"] = True
    net = constructor(
        include_top=False, weights=weights, pooling="avg",
        input_shape=(image_size, image_size, 3), **kwargs,
    )
    net.name = "backbone"
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # keras.applications set momentum 0.99 (ResNet50) to 0.999
            # (MobileNetV3): moving statistics that need thousands of steps
            # to forget their start (mean 0, variance 1). After 1,200 steps
            # from scratch MobileNetV3Small's were still 30% initial, and in
            # inference every photo got the same class. The NIN trunk's
            # 0.9 settles within any of our budgets.
            layer.momentum = BACKBONE_BN_MOMENTUM
    return net(x)


@keras.saving.register_keras_serializable(package="mtct_tf")
class MTN(keras.Model):
    """Multi-Task Network: shared trunk, one 3-layer FC branch per attribute.

    Args:
        num_values: dict attribute name -> number of values (insertion order
            is the output order), or an ``AttributeSchema``.
        preset: ``"paper"``, ``"small"`` or ``"tiny"``; supplies defaults for
            the four arguments below.
        image_size: input height and width in pixels.
        width: channel multiplier of the NIN trunk.
        fc_units: units of each branch's two hidden FC layers.
        dropout: dropout rate after each hidden FC layer.
        backbone: ``"nin"`` or one of ``APPLICATIONS``.
        weights: for ``keras.applications`` backbones: ``None``,
            ``"imagenet"`` or the path of a weights file.
        kinds: dict attribute name -> ``"softmax"`` (default for absent
            names) or ``"multilabel"`` (sigmoid head); taken from the schema
            when ``num_values`` is an ``AttributeSchema``.
        heads: ``"branches"`` (one FC branch per attribute) or ``"joint"``
            (JAN: one shared branch scoring every value; see the module
            docstring).
    """

    def __init__(self, num_values, preset="small", image_size=None,
                 width=None, fc_units=None, dropout=None, backbone="nin",
                 weights=None, kinds=None, heads="branches", **kwargs):
        if isinstance(num_values, attributes_lib.AttributeSchema):
            if kinds is None:
                kinds = num_values.kinds
            num_values = num_values.num_values
        num_values = dict(num_values)
        kinds = dict(kinds or {})
        unknown = sorted(set(kinds) - set(num_values))
        bad = sorted(k for k in set(kinds.values())
                     if k not in (attributes_lib.SOFTMAX,
                                  attributes_lib.MULTILABEL))
        if unknown or bad:
            raise ValueError(
                "`kinds` must map attributes of `num_values` to "
                f"{attributes_lib.SOFTMAX!r} or {attributes_lib.MULTILABEL!r}."
                f" Received: kinds={kinds}"
            )
        kinds = {name: kinds.get(name, attributes_lib.SOFTMAX)
                 for name in num_values}
        # A multilabel head of one binary attribute is one sigmoid; a
        # softmax needs two values.
        if not num_values or any(
            not isinstance(n, int)
            or n < (1 if kinds[name] == attributes_lib.MULTILABEL else 2)
            for name, n in num_values.items()
        ):
            raise ValueError(
                "`num_values` must map attribute names to integers >= 2 "
                "(>= 1 for multilabel heads). "
                f"Received: num_values={num_values}, kinds={kinds}"
            )
        if "embedding" in num_values:
            raise ValueError(
                "'embedding' names the embedding output and cannot be an "
                f"attribute. Received: num_values={num_values}"
            )
        if preset not in PRESETS:
            raise ValueError(
                f"`preset` must be one of {sorted(PRESETS)}. "
                f"Received: preset={preset!r}"
            )
        if backbone not in BACKBONES:
            raise ValueError(
                f"`backbone` must be one of {BACKBONES}. "
                f"Received: backbone={backbone!r}"
            )
        if heads not in HEADS:
            raise ValueError(f"`heads` must be one of {HEADS}. "
                             f"Received: heads={heads!r}")
        if backbone == "nin" and weights is not None:
            raise ValueError(
                "The NIN trunk has no published weights: pre-train it with "
                "`--stage pretrain` and start from it with `init_from`. "
                f"Received: weights={weights!r}"
            )
        defaults = PRESETS[preset]
        image_size = image_size or defaults["image_size"]
        width = width or defaults["width"]
        fc_units = fc_units or defaults["fc_units"]
        dropout = defaults["dropout"] if dropout is None else dropout

        # === Layers and Functional Model ===
        inputs = keras.Input((image_size, image_size, 3), name="image")
        mode = "tf" if backbone == "nin" else APPLICATIONS[backbone][1]
        x = Normalize(mode, name="normalize")(inputs)
        if backbone == "nin":
            features = _nin_trunk(x, width)
        else:
            features = _application_trunk(x, backbone, weights, image_size)

        outputs, penultimate = {}, []

        def drop(x, name, i):
            if not dropout:
                return x
            return keras.layers.Dropout(dropout, name=f"{name}_drop{i}")(x)

        def hidden(name):
            """The branch's two hidden layers: (output, embedding)."""
            fc1, fc2 = (keras.layers.Dense(fc_units, activation="relu",
                                           name=f"{name}_fc{i}")
                        for i in (1, 2))
            h1 = fc1(features)
            h2 = fc2(drop(h1, name, 1))
            # The embedding is fc2 (the same layer) on the dropout-free fc1
            # output: dropout noise in it moves an anchor about as far from
            # its own inference embedding as from its positive, and the
            # cross-domain loss would pull noise.
            return drop(h2, name, 2), (fc2(h1) if dropout else h2)

        def activation(name):
            # float32 softmax keeps probabilities exact under mixed
            # precision.
            return keras.layers.Activation(
                "sigmoid" if kinds[name] == attributes_lib.MULTILABEL
                else "softmax", dtype="float32", name=name)

        if heads == "joint":
            h, embedding = hidden(JOINT)
            logits = keras.layers.Dense(sum(num_values.values()),
                                        name=f"{JOINT}_logits")(h)
            penultimate.append(embedding)
            start = 0
            for name, n in num_values.items():
                part = ValueSlice(start, n, name=f"{JOINT}_{name}")(logits)
                outputs[name] = activation(name)(part)
                start += n
        for name, n in (num_values.items() if heads == "branches" else ()):
            h, embedding = hidden(name)
            penultimate.append(embedding)
            logits = keras.layers.Dense(n, name=f"{name}_logits")(h)
            outputs[name] = activation(name)(logits)
        if len(penultimate) > 1:
            embedding = keras.layers.Concatenate(name="embedding_concat")(
                penultimate
            )
        else:
            embedding = penultimate[0]
        outputs["embedding"] = keras.layers.Activation(
            "linear", dtype="float32", name="embedding"
        )(embedding)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_values = num_values
        self.kinds = kinds
        self.preset = preset
        self.image_size = image_size
        self.width = width
        self.fc_units = fc_units
        self.dropout = dropout
        self.backbone = backbone
        self.weights_arg = weights
        self.heads = heads

    @property
    def attribute_names(self):
        return tuple(self.num_values)

    def branch_layers(self):
        """The per-attribute FC branch layers (what ``finetune: fc`` trains)."""
        prefixes = tuple(f"{name}_" for name in self.num_values) + (
            f"{JOINT}_",)
        return [
            layer for layer in self.layers
            if layer.name.startswith(prefixes) or layer.name in self.num_values
        ]

    def trunk_layers(self):
        """Every layer with weights that is not in a branch."""
        branch = {id(layer) for layer in self.branch_layers()}
        return [
            layer for layer in self.layers
            if id(layer) not in branch and layer.weights
        ]

    def get_config(self):
        # Only multilabel heads are listed: an all-softmax model's config
        # (and saved file) has no kinds entry, and loads without one.
        multilabel = {name: kind for name, kind in self.kinds.items()
                      if kind != attributes_lib.SOFTMAX}
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_values": self.num_values,
            "preset": self.preset,
            "image_size": self.image_size,
            "width": self.width,
            "fc_units": self.fc_units,
            "dropout": self.dropout,
            "backbone": self.backbone,
            # Weights travel with the saved model, not by name or path.
            "weights": None,
            **({"kinds": multilabel} if multilabel else {}),
            # Listed only for JAN: MTN files load without it.
            **({"heads": self.heads} if self.heads != "branches" else {}),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def count_flops(model):
    """Multiply-adds x 2 of one image's forward pass through conv/dense layers.

    Counted from layer shapes: a conv costs 2*k*k*C_in*C_out*H_out*W_out
    (divided by the group count), a dense layer 2*in*out. Batch norm, ReLU,
    pooling and softmax are left out (under 1% of the total for the NIN
    trunk). Nested models (``keras.applications`` backbones) are walked.

    Returns:
        FLOPs per image (int).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_flops(layer)
        elif isinstance(layer, (keras.layers.Conv2D,
                                keras.layers.DepthwiseConv2D)):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                total += 2 * kh * kw * c_in * h * w * layer.depth_multiplier
            else:
                groups = getattr(layer, "groups", 1)
                total += 2 * kh * kw * c_in * c_out * h * w // groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
