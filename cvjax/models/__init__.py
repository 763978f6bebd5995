"""The model library: every architecture as a pure `flax.linen` module, by registered name.

    model = get_model('resnet50', num_classes=1000, conv_impl='auto')
    variables = model.init(key, jnp.zeros((1, *model_info('resnet50').input_shape)))
    logits = model.apply(variables, x, train=False)  # float32[B, 1000]
"""
from cvjax.models.conv_lowering import CONV_IMPLS
from cvjax.models.registry import (ModelInfo, get_model, list_models, model_info,
                                   model_input_shape, model_num_classes, model_options,
                                   model_task, register_model)

__all__ = ['CONV_IMPLS', 'ModelInfo', 'get_model', 'list_models', 'model_info',
           'model_input_shape', 'model_num_classes', 'model_options', 'model_task',
           'register_model']
