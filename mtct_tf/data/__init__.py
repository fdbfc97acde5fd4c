"""Data: tf.Example format, manifests, shards, tf.data pipelines, renderer."""
