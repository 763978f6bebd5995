"""Transfer learning: fine-tune imported or pre-trained weights on a new dataset.

  python -m cvjax.convert --source=keras --model=resnet50 \
      --weights=resnet50_weights_tf_dim_ordering_tf_kernels.h5 --out=runs/resnet50_keras_imagenet
  python -m experiments.transfer --flagfile=experiments/configs/transfer_resnet50_tf_flowers.flags \
      --init_from=runs/resnet50_keras_imagenet

The recipe is in its flagfile; --recipe picks what happens with the shared flags (which
describe phase 1):
  two_phase  (default) the lecture's recipe: phase 1 trains with --freeze (all_but_head:
             only the new head), phase 2 continues from it with --phase2_freeze
             (all_but_top:2: the top two stages and the head train) and the learning rate
             times --phase2_lr_scale (10-100× smaller). Workdirs WORKDIR/phase1, /phase2.
  fine_tune  one run with the flags as given.
  features   plain feature extraction: the base's features are computed once per image,
             a new head is trained on them (WORKDIR/head), and WORKDIR/model is the base
             with that head, for cvjax.restore.
Every phase is an ordinary resumable workdir: re-run the same command to continue.
"""
from absl import flags

from experiments import common


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The flags of this program besides the shared ones: --recipe and phase 2's."""
  f = dict(flag_values=flag_values)
  flags.DEFINE_enum('recipe', 'two_phase', ['two_phase', 'fine_tune', 'features'],
                    'What to run; see the module doc.', **f)
  flags.DEFINE_string('phase2_freeze', 'all_but_top:2', 'Frozen params in phase 2 '
                      '("" to unfreeze everything).', **f)
  flags.DEFINE_float('phase2_lr_scale', 0.1, 'Phase 2 learning rate = this × --learning_rate.',
                     **f)
  flags.DEFINE_float('phase2_epochs', None, 'Phase 2 length in epochs (default: as phase 1).',
                     **f)
  flags.DEFINE_integer('phase2_steps', None, 'Phase 2 length in steps; overrides phase2_epochs.',
                       **f)


def run(config, workdir):
  """Runs --recipe; returns the final phase's results (fit's dict)."""
  from cvjax import transfer  # pylint: disable=g-import-not-at-top  (JAX after the flags)
  from cvjax.tasks import fit  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.recipe == 'fine_tune':
    return fit(config, workdir)
  if f.recipe == 'features':
    results = transfer.feature_extraction(config, workdir)
    print(f'features: head trained on cached features; full model in {results["model_workdir"]}')
    return results
  results = transfer.two_phase(config, workdir, phase2_freeze=f.phase2_freeze,
                               phase2_lr_scale=f.phase2_lr_scale,
                               phase2_epochs=f.phase2_epochs, phase2_steps=f.phase2_steps)
  p1 = results['phase1']
  print(f'phase 1 (freeze={config.freeze or "none"}): test_accuracy={p1["test_accuracy"]:.4f} '
        f'steps={p1["step"]} train_seconds={p1["train_seconds"]:.0f}')
  print(f'phase 2 (freeze={f.phase2_freeze or "none"}, lr×{f.phase2_lr_scale:g}):', end=' ')
  return results


def main() -> None:
  define_flags()
  common.main(run=run)


if __name__ == '__main__':
  main()
