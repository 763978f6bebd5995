"""Which converter module reads which weights: sources and the torchvision model names
that have their own module. Importing this loads nothing, so the package can dispatch
on a name before it imports a converter."""

SOURCES = ('keras', 'torchvision', 'darknet')  # darknet: `cvjax.pretrained.darknet` (YOLOv3)
SSD_MODELS = ('vgg16_features', 'ssd300_vgg16')  # torchvision names, `cvjax.pretrained.ssd`
DEEPLAB_MODELS = ('deeplabv3_resnet50', 'deeplabv3_resnet101')  # `cvjax.pretrained.deeplab`
