"""The garment detector: TF Model Garden Faster R-CNN, trained, exported, used.

SPEC §2.1: a Faster R-CNN finds the garment on street photos and its crop feeds
the attribute network; shop photos are clean and used whole. Everything here
wraps Model Garden (``official.vision``) rather than re-implementing it:

* ``config``: ``detector_config``, the registered ``fasterrcnn_resnetfpn_coco``
  experiment with a ``small`` (CPU) or ``paper`` preset.
* ``records``: ``write_detection_records``, manifest entries with boxes ->
  sharded tf.Examples in Model Garden's detection format.
* ``train_lib``: ``train`` / ``evaluate`` / ``export`` through Model Garden's
  ``train_lib`` and ``export_saved_model_lib``.
* ``boxes``: ``rescale_boxes`` / ``choose_box`` / ``expand_box`` /
  ``box_iou`` in NumPy, and ``choose_box_in_graph`` for the serving graph.
* ``crop``: ``load_detector`` and ``crop_with_detector``, which runs the
  exported SavedModel over street images and writes attribute shards of the
  crops.

The names below are re-exported, so ``from mtct_tf import detector`` then
``detector.crop_with_detector(...)`` works. ``official.*`` and TensorFlow are
imported inside functions so that importing the package stays light.
"""

from mtct_tf.detector.boxes import (box_iou, choose_box, choose_box_in_graph,
                                    expand_box, normalize_boxes,
                                    rescale_boxes)
from mtct_tf.detector.config import (CLASS_NAMES, EXPERIMENT, PRESETS,
                                     detector_config, load_config,
                                     split_pattern, with_eval_pattern)
from mtct_tf.detector.crop import (CROP_BBOX, CROP_SCORE, CROP_SOURCE,
                                   DETECTOR_OUTPUTS, DETECTOR_SIGNATURES,
                                   CropStats, crop_with_detector,
                                   load_detector)
from mtct_tf.detector.records import (DET_IMAGE_ID, RECORDS_INFO,
                                      detection_example,
                                      write_detection_records, write_shards)
from mtct_tf.detector.train_lib import evaluate, export, train

__all__ = [
    "CLASS_NAMES", "CROP_BBOX", "CROP_SCORE", "CROP_SOURCE",
    "DETECTOR_OUTPUTS", "DETECTOR_SIGNATURES", "DET_IMAGE_ID", "EXPERIMENT",
    "PRESETS", "RECORDS_INFO", "CropStats", "box_iou", "choose_box",
    "choose_box_in_graph", "crop_with_detector", "detection_example",
    "detector_config", "evaluate", "expand_box", "export", "load_config",
    "load_detector", "normalize_boxes", "rescale_boxes", "split_pattern",
    "train", "with_eval_pattern", "write_detection_records", "write_shards",
]
