"""The detector's Model Garden experiment: Faster R-CNN config and presets.

``detector_config`` starts from the registered ``fasterrcnn_resnetfpn_coco``
experiment with a ``small`` (CPU), ``demo`` (the 128 px synthetic photos) or
``paper`` preset, 2 classes (background, garment), and everything that
reaches the network (GCS init checkpoint, COCO annotation file) switched
off. ``official.*`` is imported inside functions so
that importing the package stays light.
"""

import os

PRESETS = ("small", "demo", "paper")
CLASS_NAMES = ("background", "garment")
EXPERIMENT = "fasterrcnn_resnetfpn_coco"


def split_pattern(records, split):
    """The file pattern of ``split``'s shards in a records directory."""
    return os.path.join(records, f"{split}-*-of-*.tfrecord")


def detector_config(preset="small", *, records=None, eval_split="val",
                    train_pattern=None, eval_pattern=None, steps=None,
                    train_batch_size=None, eval_batch_size=None,
                    input_size=None, learning_rate=None, init_checkpoint=None,
                    params_override=None):
    """Builds the Faster R-CNN ``ExperimentConfig`` for the garment detector.

    Starts from Model Garden's registered ``fasterrcnn_resnetfpn_coco`` and
    changes only what the preset and the overrides say.

    * ``small`` (CPU): ResNet-18, 128-filter FPN and RPN head, a box head of
      2 FC layers of 256 (no convs), 256 px input (sensible range 256-384),
      256 train / 100 test proposals, 64 sampled RoIs, batch 8, SGD lr
      0.02, 1500 steps. On X-Domain-synth street scenes (540 training
      photos) it reached AP50 0.989 / AP 0.623 on the test split from
      scratch (docs/DETECTOR.md).
    * ``demo``: ``small`` cut to the 128 px photos of X-Domain-synth (garments
      of 30-90 px): ResNet-10, FPN levels 3-5 with anchors of 32, 64 and 128
      px, 128 px input, 500 -> 128 train / 300 -> 50 test proposals, 700
      steps. On the demo's test split it reached AP50 0.955-0.972 / AP
      0.47-0.50, at about a sixth of the CPU time per step of ``small``
      at 256 px (docs/DETECTOR.md).
    * ``paper``: ResNet-50 FPN with Model Garden's COCO heads, 640 px input
      (range 640-1024; COCO uses 1024), batch 64, SGD lr 0.12, 22500 steps.

    Both: 2 classes (background + garment), float32 on CPU, no sync BN, no
    network access (the COCO config's GCS backbone checkpoint and annotation
    file are cleared: the evaluator builds its ground truth from the eval
    records). The learning rate warms up linearly then steps down by 10x at
    2/3 and 8/9 of training, Model Garden's COCO schedule scaled to ``steps``.

    Args:
        preset: ``"small"``, ``"demo"`` or ``"paper"``.
        records: a detection records directory (``write_detection_records``);
            sets the train pattern to ``train-*`` and the eval pattern to
            ``<eval_split>-*`` inside it.
        eval_split: the split evaluated (``"val"`` or ``"test"``).
        train_pattern, eval_pattern: explicit file patterns (win over
            ``records``).
        steps: training steps.
        train_batch_size, eval_batch_size: global batch sizes.
        input_size: square input side in pixels (a multiple of
            ``2 ** max_level``: 64, or 32 for ``demo``).
        learning_rate: peak learning rate.
        init_checkpoint: a backbone checkpoint (ImageNet / COCO) to start from;
            restored into ``task.init_checkpoint`` with modules ``backbone``.
        params_override: a dict or YAML string applied last
            (Model Garden's ``--params_override``).

    Returns:
        An ``official.core.config_definitions.ExperimentConfig``.

    Raises:
        ValueError: unknown preset or an input size that is not a multiple
            of ``2 ** max_level``.
    """
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.vision import registry_imports  # noqa: F401 (registers)

    if preset not in PRESETS:
        raise ValueError(
            f"Unknown detector preset. Expected one of {PRESETS}. "
            f"Received: preset={preset!r}"
        )
    demo = preset == "demo"
    small = preset == "small" or demo  # demo is small, resized.
    size = input_size or (128 if demo else 256 if small else 640)
    max_level = 5 if demo else 6
    if size % 2 ** max_level:
        raise ValueError(
            f"input_size must be a multiple of {2 ** max_level} "
            f"(2 ** max_level). Received: input_size={size}"
        )
    steps = steps or (700 if demo else 1500 if small else 22500)
    train_bs = train_batch_size or (8 if small else 64)
    eval_bs = eval_batch_size or 8
    lr = learning_rate or (0.02 if small else 0.12)

    params = exp_factory.get_exp_config(EXPERIMENT)
    task = params.task
    model = task.model
    model.num_classes = len(CLASS_NAMES)
    model.input_size = [size, size, 3]
    model.norm_activation.use_sync_bn = False
    task.init_checkpoint = init_checkpoint or None
    task.init_checkpoint_modules = "backbone"
    task.annotation_file = None
    params.runtime.mixed_precision_dtype = "float32"
    params.runtime.distribution_strategy = "one_device"
    params.runtime.num_gpus = 0
    if small:
        model.backbone.resnet.model_id = 18
        model.decoder.fpn.num_filters = 128
        model.rpn_head.num_filters = 128
        # The box head runs on every RoI: Model Garden's 4 convs of 256
        # filters per RoI cost more than the backbone on CPU. Two narrow FCs
        # (the original Faster R-CNN head, 256 wide) measured ~3x faster.
        model.detection_head.num_convs = 0
        model.detection_head.num_fcs = 2
        model.detection_head.fc_dims = 256
        model.roi_generator.pre_nms_top_k = 1000
        model.roi_generator.num_proposals = 256
        model.roi_generator.test_pre_nms_top_k = 500
        model.roi_generator.test_num_proposals = 100
        model.roi_sampler.num_sampled_rois = 64
        model.detection_generator.max_num_detections = 20
    if demo:
        # The demo photos are 128 px with garments of 30-90 px (up to 112
        # with the scale jitter): anchors of 32, 64 and 128 px on levels
        # 3-5 cover them; level 2 (a 32 x 32 map) and level 6 (2 x 2, 256
        # px anchors) only cost time. 128 px is the photos' own size: more
        # pixels carry no information. At this size ResNet-10 reached about
        # the AP50 of ResNet-18 (0.955 vs 0.965 at 700 steps) at about 1.4
        # times its steps/s. About 1,000 anchors per image, so 500 pre-NMS
        # proposals keep the likely half.
        model.backbone.resnet.model_id = 10
        model.min_level, model.max_level = 3, max_level
        model.anchor.anchor_size = 4.0
        model.roi_generator.pre_nms_top_k = 500
        model.roi_generator.num_proposals = 128
        model.roi_generator.test_pre_nms_top_k = 300
        model.roi_generator.test_num_proposals = 50
    elif not small:
        model.backbone.resnet.model_id = 50

    for data, pattern, bs in (
        (task.train_data, train_pattern, train_bs),
        (task.validation_data, eval_pattern, eval_bs),
    ):
        data.dtype = "float32"
        data.global_batch_size = bs
        data.shuffle_buffer_size = 1000
        data.input_path = pattern or ""
    if records:
        task.train_data.input_path = (
            train_pattern or split_pattern(records, "train"))
        task.validation_data.input_path = (
            eval_pattern or split_pattern(records, eval_split))

    trainer = params.trainer
    trainer.train_steps = steps
    trainer.validation_steps = -1  # The whole eval split.
    trainer.validation_interval = steps  # One evaluation, at the end.
    loop = max(1, min(100, steps))
    trainer.steps_per_loop = loop
    trainer.summary_interval = loop
    trainer.checkpoint_interval = max(loop, min(500, steps))
    trainer.max_to_keep = 3
    warmup = max(1, min(500, steps // 10))
    trainer.optimizer_config.learning_rate.stepwise.boundaries = [
        max(warmup + 1, int(steps * 2 / 3)), max(warmup + 2, int(steps * 8 / 9))
    ]
    trainer.optimizer_config.learning_rate.stepwise.values = [
        lr, lr / 10, lr / 100
    ]
    trainer.optimizer_config.warmup.linear.warmup_steps = warmup
    trainer.optimizer_config.warmup.linear.warmup_learning_rate = lr / 20

    if params_override:
        params = hyperparams.override_params_dict(
            params, params_override, is_strict=True)
    params.validate()
    return params


def load_config(path):
    """Reads a ``params.yaml`` written by ``train`` or ``export``."""
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.vision import registry_imports  # noqa: F401

    params = exp_factory.get_exp_config(EXPERIMENT)
    params.task.init_checkpoint = None
    params.task.annotation_file = None
    return hyperparams.override_params_dict(params, path, is_strict=True)


def with_eval_pattern(params, pattern):
    """Points the evaluator at other records (e.g. the test split)."""
    params.task.validation_data.input_path = pattern
    return params

