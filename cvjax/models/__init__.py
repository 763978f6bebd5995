"""The model library: LeNet-5, AlexNet, VGG, ResNet as pure `flax.linen` modules.

    model = get_model('resnet50', num_classes=1000)
    variables = model.init(key, jnp.zeros((1, *model_input_shape('resnet50'))))
    logits = model.apply(variables, x, train=False)  # float32[B, 1000]
"""
from cvjax.models.registry import (get_model, list_models, model_input_shape,
                                   model_num_classes, model_options)

__all__ = ['get_model', 'list_models', 'model_input_shape', 'model_num_classes',
           'model_options']
