"""Single-image super-resolution (task 'superres'): SRCNN, ESPCN and EDSR-baseline on
`cvjax_sr_photos`, whole photographs that ship with scikit-image, split by image.

  python -m experiments.superres --flagfile=experiments/configs/edsr_baseline_x2_sr_photos.flags

The dataset is built offline on first use (cvjax.data.sr_photos); each epoch is 64
random windows of every training photograph; evaluation reports PSNR-Y (the main
metric), SSIM-Y and bicubic's PSNR-Y on the central 288² of the eval photographs.
`python -m cvjax.superres --workdir=W --evaluate` scores whole test photographs and
`--image=in.png --out=out.png` upscales a file.
"""
from experiments import common

if __name__ == '__main__':
  common.main()
