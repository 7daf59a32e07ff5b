"""In-repo model definitions behind a small registry (no torchvision, no downloads).

``create_model(name, num_classes=10, in_chans=1)`` builds a model; ``list_models()`` lists
the names with a one-line description. Every factory takes the same keyword arguments so a
pruned checkpoint can be rebuilt from ``(name, kwargs)`` alone. Importing this package imports
every definition module, which registers its factories.
"""

from edgecompress.models.zoo import (  # noqa: F401  (registers the factories)
    cifar_resnet,
    convnext,
    densenet,
    efficientnet,
    googlenet,
    mobilenet,
    mobilenet_imagenet,
    regnet,
    resnet,
    shufflenet,
    squeezenet,
    vgg,
)
from edgecompress.models.zoo.registry import ZooEntry, create_model, get_entry, list_models, register

__all__ = ["ZooEntry", "create_model", "get_entry", "list_models", "register"]
