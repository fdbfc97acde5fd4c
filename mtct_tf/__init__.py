"""mtct_tf: Multi-Task Curriculum Transfer deep learning of clothing attributes.

TensorFlow / Keras 3 implementation of Dong, Gong and Zhu (WACV 2017): a
Multi-Task Network with one softmax head per attribute is trained on clean
shop images, then transferred to street photos with a cross-domain t-STE
triplet loss. See README.md for the commands.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up notices (CUDA absent, oneDNN on) drown the
# progress bars; users can still ask for them with TF_CPP_MIN_LOG_LEVEL=0.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
