"""fastmod.models: the seed's architectures as ready-to-train constructors (one line per family)."""
from fastmod.models.mlp import mlp, resnet_s
from fastmod.models.cnn import cnn, bn_resnet, densenet
from fastmod.models.transformer import transformer_classifier, TransformerClassifier
