"""fastmod.models: the seed's architectures as ready-to-train constructors (one line per family)."""
from fastmod.models.mlp import mlp, resnet_s
