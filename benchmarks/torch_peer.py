"""PyTorch peers for benchmarks.throughput: the same architectures as cvjax's, on torch's CPU kernels.

torchvision's model where cvjax's is the same network (`TORCHVISION`), and the
small nets torchvision lacks (LeNet-5, the CIFAR ResNets with option-A shortcuts,
the lectures' deep CNN) written here in a few lines. Inputs are NCHW tensors in
channels_last memory, the fast layout for torch's oneDNN convolutions on CPU.
"""
from __future__ import annotations

from typing import Callable

# cvjax name → torchvision builder name (same layers, same parameter count).
TORCHVISION = {
    **{f'resnet{d}': f'resnet{d}' for d in (18, 34, 50, 101, 152)},
    **{f'vgg{d}': f'vgg{d}' for d in (11, 13, 16, 19)},
    **{f'vgg{d}_bn': f'vgg{d}_bn' for d in (11, 13, 16, 19)},
    'alexnet_torchvision': 'alexnet',
    'mobilenet_v2': 'mobilenet_v2',
    'efficientnet_b0': 'efficientnet_b0',
    'vit_b16': 'vit_b_16',
    'resnext50_32x4d': 'resnext50_32x4d',
    **{f'densenet{d}': f'densenet{d}' for d in (121, 169, 201)},
}
CIFAR_RESNETS = {'resnet20': 3, 'resnet32': 5, 'resnet44': 7, 'resnet56': 9, 'resnet110': 18}
# The model_kwargs of cvjax's deep_cnn that shape its peer.
DEEP_CNN_OPTIONS = ('widths', 'convs_per_stage', 'hidden', 'dropout_rate', 'head_dropout_rate')


def _lenet5(num_classes: int, activation: str = 'tanh', pooling: str = 'avg'):
  from torch import nn  # pylint: disable=g-import-not-at-top
  act = {'tanh': nn.Tanh, 'relu': nn.ReLU}[activation]
  pool = {'avg': nn.AvgPool2d, 'max': nn.MaxPool2d}[pooling]
  return nn.Sequential(nn.Conv2d(1, 6, 5), act(), pool(2), nn.Conv2d(6, 16, 5), act(), pool(2),
                       nn.Conv2d(16, 120, 5), act(), nn.Flatten(), nn.Linear(120, 84), act(),
                       nn.Linear(84, num_classes))


def _cifar_resnet(n: int, num_classes: int):
  """He et al. §4.2: 3×3 conv 16, 3 stages of n basic blocks (16, 32, 64), option-A shortcuts."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.stride, self.extra = stride, cout - cin
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if self.extra or self.stride > 1:  # subsample, zero-pad the new channels
        x = F.pad(x[:, :, ::self.stride, ::self.stride],
                  (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + x)

  layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
  cin = 16
  for i, width in enumerate((16, 32, 64)):
    for j in range(n):
      layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def _deep_cnn(num_classes: int, image_size: int, widths=(32, 64, 128), convs_per_stage: int = 2,
              hidden: int = 512, dropout_rate: float = 0.25, head_dropout_rate: float = 0.5):
  """cvjax's DeepCNN: per width, convs_per_stage × (3×3 conv, BN, ReLU), 2×2 max-pool, dropout;
  then flatten, fc `hidden` + BN + ReLU, dropout, fc num_classes. 1-channel input."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  layers, cin, size = [], 1, image_size
  for width in widths:
    for _ in range(convs_per_stage):
      layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
      cin = width
    layers += [nn.MaxPool2d(2), nn.Dropout(dropout_rate)]
    size //= 2
  layers += [nn.Flatten(), nn.Linear(cin * size * size, hidden, bias=False),
             nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(head_dropout_rate),
             nn.Linear(hidden, num_classes)]
  return nn.Sequential(*layers)


def build_model(model_name: str, num_classes: int, model_kwargs: dict, image_size: int = 28):
  """The torch module for a cvjax model name, or None when there is no equivalent here.

  image_size: the input's height and width; it sizes the dense layer after deep_cnn's
  flatten (28: deep_cnn's natural input). The other models do not depend on it.
  """
  import torchvision  # pylint: disable=g-import-not-at-top
  if model_name in TORCHVISION:
    return getattr(torchvision.models, TORCHVISION[model_name])(weights=None,
                                                                 num_classes=num_classes)
  if model_name == 'lenet5':
    return _lenet5(num_classes, **{k: v for k, v in model_kwargs.items()
                                   if k in ('activation', 'pooling')})
  if model_name in CIFAR_RESNETS and model_kwargs.get('shortcut', 'A') == 'A':
    return _cifar_resnet(CIFAR_RESNETS[model_name], num_classes)
  if model_name == 'deep_cnn':
    return _deep_cnn(num_classes, image_size, **{k: v for k, v in model_kwargs.items()
                                                 if k in DEEP_CNN_OPTIONS})
  return None


def device_and_autocast(half_precision: str | None = None):
  """('cuda' or 'cpu', a context manager): CUDA when torch has it; bf16 AMP when asked."""
  import torch  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  return device, lambda: torch.autocast(device, dtype=torch.bfloat16,
                                        enabled=half_precision == 'bf16')


def runners(model_name: str, image_size: int, channels: int, batch_size: int, num_classes: int,
            model_kwargs: dict, half_precision: str | None = None
            ) -> dict[str, Callable[[int], None]] | None:
  """{'train': run(n), 'infer': run(n)}: n SGD-momentum steps / n no-grad forwards, warmed up.

  On the GPU when torch has CUDA (each run waits for the device before it returns);
  half_precision='bf16': forward and loss under bf16 autocast (AMP; the weights and the
  optimizer stay float32, and bf16 needs no gradient scaler).
  Raises ImportError when torch or torchvision is missing.
  """
  import torch  # pylint: disable=g-import-not-at-top
  model = build_model(model_name, num_classes, model_kwargs, image_size)
  if model is None:
    return None
  device, autocast = device_and_autocast(half_precision)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  model = model.to(device, memory_format=torch.channels_last)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch_size, channels, image_size, image_size, generator=gen)
  x = x.contiguous(memory_format=torch.channels_last).to(device)
  y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()

  def train(n: int) -> None:
    model.train()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = loss_fn(model(x), y)
      loss.backward()
      opt.step()
    sync()

  def infer(n: int) -> None:
    model.eval()
    with torch.no_grad(), autocast():
      for _ in range(n):
        model(x)
    sync()

  train(1)
  infer(1)
  return {'train': train, 'infer': infer}
