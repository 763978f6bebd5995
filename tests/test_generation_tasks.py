"""The generative tasks on the one loop: the GAN's two optimizers in one state, 1 vs 8 devices,
exact resume after kill -9, the VAE's ELBO, restore's sample/encode/decode, cvjax.sample, and
the settings each task refuses."""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cvjax
from cvjax import models, sample as sample_tool
from cvjax.errors import UserError
from cvjax.generation import elbo
from cvjax.tasks import fit, task_class
from cvjax.tasks.gan import GANTask, per_network
from cvjax.tasks.generation import VAETask
from cvjax.train import TrainConfig, steps
from cvjax.train.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_UNET = {'base': 8, 'channel_mults': (1, 2), 'num_res_blocks': 1,
              'attention_resolutions': (14,)}
GAN = TrainConfig(task='gan', model='dcgan', model_kwargs={'width': 8}, dataset='mnist',
                  optimizer='adam', momentum=0.5, learning_rate=2e-4, schedule='constant')
DDPM = TrainConfig(task='diffusion', model='ddpm_unet', model_kwargs=SMALL_UNET, dataset='mnist',
                   optimizer='adam', learning_rate=1e-3, schedule='constant', diffusion_steps=50)


def _images(n=16, seed=0, low=-1.0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(low, 1.0, (n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def _train(task, num_devices, num_steps=2, dtype=jnp.float32):
  """(state, metrics history) after `num_steps` data-parallel steps on `num_devices`."""
  mesh = steps.make_mesh(num_devices)
  model = models.get_model(task.config.model, num_classes=10, dtype=dtype, param_dtype=dtype,
                           **({'bn_axis_name': steps.AXIS} if models.model_info(
                               task.config.model).batch_norm else {}),
                           **task.config.model_kwargs)
  tx = task.optimizer(optax.constant_schedule(task.config.learning_rate))
  state = jax.jit(lambda k: create_train_state(model, tx, k, (1, 28, 28, 1)))(
      jax.random.PRNGKey(0))
  state = jax.device_put(state, steps.replicated(mesh))
  step = steps.parallel_train_step(mesh, task)
  history = []
  for i in range(num_steps):
    batch = {k: v.astype(dtype) if v.dtype == np.float32 else v
             for k, v in _images(seed=i).items()}
    state, metrics = step(state, jax.device_put(batch, steps.batch_sharded(mesh)))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.slow
@pytest.mark.parametrize('config', [GAN], ids=['gan'])  # DDPM: the same per_example draws
def test_one_and_eight_devices_take_the_same_generative_steps(config):
  """Latents and noise are drawn per example of the global batch, BatchNorm averages over
  the global batch and gradients are pmean'ed once: 8 devices train as 1 (float64)."""
  if config.task == 'diffusion':  # dropout masks differ per device by design
    config = config.replace(model_kwargs={**config.model_kwargs, 'dropout_rate': 0.0})
  task = task_class(config.task)(config, None)
  with jax.enable_x64(True):
    one, hist1 = _train(task, 1, dtype=jnp.float64)
    eight, hist8 = _train(task, 8, dtype=jnp.float64)
  assert _max_diff(one.params, eight.params) < 1e-10
  if one.batch_stats:
    assert _max_diff(one.batch_stats, eight.batch_stats) < 1e-10
  for a, b in zip(hist1, hist8):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)  # some metrics are float32


def test_per_network_steps_each_network_with_its_own_state():
  tx = per_network(optax.adam(0.1), optax.sgd(1.0))
  params = {'generator': jnp.ones(2), 'discriminator': jnp.ones(2)}
  state = tx.init(params)
  grads = {'generator': jnp.array([1.0, -1.0]), 'discriminator': jnp.array([0.5, 0.5])}
  updates, new = tx.update(grads, state, params)
  np.testing.assert_allclose(updates['generator'], [-0.1, 0.1], rtol=1e-5)  # Adam's first step: lr·sign
  np.testing.assert_allclose(updates['discriminator'], [-0.5, -0.5])
  assert int(new.generator[0].count) == 1


@pytest.mark.slow
def test_gan_step_updates_each_network_against_its_own_loss():
  """The discriminator's step lowers its loss on the same batch; the generator's lowers the
  non-saturating loss; an optimizer with zero learning rate for one leaves it exactly."""
  task = GANTask(GAN, None)
  state, hist = _train(task, 1, num_steps=1)
  fresh, _ = _train(task, 1, num_steps=0)
  assert set(state.params) == {'generator', 'discriminator'}
  assert int(state.step) == 1
  for net in ('generator', 'discriminator'):
    assert _max_diff(state.params[net], fresh.params[net]) > 0, net
  assert set(hist[0]) == {'loss', 'd_loss', 'g_loss', 'd_real', 'd_fake'}
  assert hist[0]['loss'] == pytest.approx(hist[0]['d_loss'] + hist[0]['g_loss'], rel=1e-6)
  assert 0 < hist[0]['d_real'] < 1 and 0 < hist[0]['d_fake'] < 1


def test_vae_loss_is_reconstruction_plus_kl_in_nats():
  task = VAETask(TrainConfig(task='vae', model='mlp_vae', dataset='mnist'), None)
  model = models.get_model('mlp_vae', num_classes=10)
  x = _images(4, low=0.0)['image']
  variables = model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                         jnp.asarray(x))
  outputs = model.apply(variables, x, rngs={'dropout': jax.random.PRNGKey(2)})
  loss, metrics = task.loss(outputs, {'image': x}, None)
  bce = optax.sigmoid_binary_cross_entropy(outputs['x'], x).sum(axis=(1, 2, 3))
  kl = 0.5 * jnp.sum(jnp.exp(outputs['logvar']) + outputs['mean'] ** 2 - 1 - outputs['logvar'],
                     axis=-1)
  np.testing.assert_allclose(metrics['reconstruction'], bce.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['kl'], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, (bce + kl).mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, -elbo.bernoulli_log_likelihood(outputs['x'], x).mean()
                             + elbo.gaussian_kl(outputs['mean'], outputs['logvar']).mean(),
                             rtol=1e-5)


def test_vae_importance_weighted_bound_is_at_least_as_tight_as_the_elbo():
  config = TrainConfig(task='vae', model='mlp_vae', dataset='mnist', iw_samples=64)
  task = VAETask(config, None)
  model = models.get_model('mlp_vae', num_classes=10)
  x = _images(8, low=0.0)['image']
  variables = model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                         jnp.asarray(x))
  batch = {'image': x, 'mask': np.ones(8, bool)}
  outputs = task.eval_apply(model.apply, variables, batch)
  sums, _ = task.eval_outputs(outputs, batch)
  assert float(sums['count']) == 8
  # log E[w] ≥ E[log w]: −log of the IW bound lies below the negative ELBO, by a margin.
  assert float(sums['iw_nll']) < float(sums['neg_elbo'])


@pytest.mark.parametrize('config, message', [
    (TrainConfig(task='gan', model='lenet5', dataset='mnist'),
     'task=gan needs one of its models (dcgan, dcgan_conditional), got lenet5'),
    (TrainConfig(task='vae', model='conv_vae', dataset='mnist', mixup_alpha=0.2),
     'task=vae learns images, not labels: --mixup_alpha mixes labels; drop it'),
    (GAN.replace(half_precision='fp16'),
     'task=gan cannot use --half_precision=fp16: its dynamic loss scale is for one loss; use '
     '--half_precision=bf16; drop it'),
    (GAN.replace(grad_accum_steps=2),
     'task=gan cannot use --grad_accum_steps=2: accumulation is for one optimizer; drop it'),
])
def test_generative_tasks_refuse_settings_that_mean_nothing_for_them(config, message):
  with pytest.raises(UserError) as info:
    task_class(config.task).check(config)
  assert str(info.value) == message


def _fit_small(config, real_mnist, workdir, steps_=4):
  return fit(config.replace(data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
                            batch_size=16, num_train_steps=steps_, eval_batch_size=200,
                            log_every_steps=2), workdir)


@pytest.mark.slow
@pytest.mark.parametrize('config', [
    GAN, DDPM, TrainConfig(task='vae', model='conv_vae', dataset='mnist', optimizer='adam',
                           learning_rate=1e-3, iw_samples=4),
    TrainConfig(task='autoencoder', model='denoising_autoencoder', dataset='mnist',
                optimizer='adam', learning_rate=1e-3),
    GAN.replace(half_precision='bf16')],
    ids=['gan', 'diffusion', 'vae', 'dae', 'gan_bf16'])
def test_a_few_steps_train_restore_and_sample(config, real_mnist, tmp_path, capsys):
  workdir = str(tmp_path / config.task)
  results = _fit_small(config, real_mnist, workdir)
  main = task_class(config.task).main_metric
  assert np.isfinite(results[f'test_{main}']) and results['test_examples'] == 1000
  restored = cvjax.restore(workdir)
  if config.task == 'autoencoder':
    with pytest.raises(UserError, match='a plain autoencoder has no prior'):
      restored.sample(4)
  else:
    options = {'steps': 5} if config.task == 'diffusion' else {}
    images = restored.sample(6, seed=3, **options)
    assert images.dtype == np.uint8 and images.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(images, restored.sample(6, seed=3, **options))
    out = str(tmp_path / 'grid.png')
    argv = [f'--workdir={workdir}', '--num=6', f'--out={out}'] + (
        ['--steps=5'] if options else [])
    assert sample_tool.main(argv) == 0
    assert os.path.getsize(out) > 0
    assert 'written to' in capsys.readouterr().out
  if config.task in ('vae', 'autoencoder'):
    test = real_mnist['test_images'][:3]
    codes = restored.encode(test)
    assert codes.shape[0] == 3 and codes.dtype == np.float32
    assert restored.reconstruct(test).shape == test.shape
    np.testing.assert_array_equal(restored.decode(codes), restored.reconstruct(test))
  with pytest.raises(UserError, match=f'a {config.task} run has no predict'):
    restored.predict(real_mnist['test_images'][:1])
  if config.task in ('vae', 'autoencoder'):
    out = str(tmp_path / 'interpolation.png')
    assert sample_tool.main([f'--workdir={workdir}', '--interpolate', f'--out={out}']) == 0
    rows, cols = sample_tool.INTERPOLATION
    from PIL import Image
    assert Image.open(out).size == (cols * 30 - 2, rows * 30 - 2)  # 28-pixel images, 2 apart


@pytest.mark.slow
def test_frechet_distance_and_kid_of_samples_and_of_real_images(real_mnist, tmp_path, capsys):
  """--fd_classifier scores samples and the train split against the test split in the
  features of a classification run; the real images score far closer than an untrained
  VAE's samples."""
  classifier, vae = str(tmp_path / 'classifier'), str(tmp_path / 'vae')
  _fit_small(TrainConfig(model='lenet5', dataset='mnist', optimizer='adam', learning_rate=1e-3),
             real_mnist, classifier, steps_=30)
  _fit_small(TrainConfig(task='vae', model='mlp_vae', dataset='mnist'), real_mnist, vae,
             steps_=1)
  capsys.readouterr()
  assert sample_tool.main([f'--workdir={vae}', f'--fd_classifier={classifier}', '--num=400',
                           '--json']) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['num'] == 400 and report['floor_split'] == 'train'
  fake, real = report['samples'], report['real_floor']
  assert 0 <= real['fd'] < fake['fd'] / 5 and real['kid'] < fake['kid']
  assert report['against'] == 'test'
  assert sample_tool.main([f'--workdir={vae}', f'--fd_classifier={classifier}', '--num=400',
                           '--fd_split=validation', '--json']) == 0
  chosen_on = json.loads(capsys.readouterr().out)
  assert chosen_on['against'] == 'validation'
  assert chosen_on['samples']['fd'] != fake['fd']  # other real images, the same samples
  assert 0 <= chosen_on['real_floor']['fd'] < chosen_on['samples']['fd'] / 5
  assert sample_tool.main([f'--workdir={vae}', f'--fd_classifier={vae}']) == 2
  assert capsys.readouterr().err == (f'error: --fd_classifier={vae} is a vae run, not a '
                                     'classification run\n')


def test_sample_tool_says_what_to_do_without_a_mode(tmp_path, capsys):
  assert sample_tool.main([f'--workdir={tmp_path}']) == 2
  assert capsys.readouterr().err == ('error: say what to do: --out=grid.png (with --interpolate '
                                     'for an interpolation) or --fd_classifier=RUN\n')
  assert sample_tool.main([f'--workdir={tmp_path}', f'--fd_classifier={tmp_path}',
                           '--fd_split=train']) == 2
  assert capsys.readouterr().err == ("error: --fd_split must be test or validation, got "
                                     "'train'\n")


def test_sample_grid_lays_images_out_row_by_row_with_white_gaps():
  images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2, 1)
  picture = sample_tool.grid(images)
  assert picture.shape == (2 * 2 + 2, 3 * 2 + 2 * 2, 1)   # 2 rows, 3 columns, 2-pixel gaps
  np.testing.assert_array_equal(picture[:2, 4:6], images[1])
  np.testing.assert_array_equal(picture[4:6, 0:2], images[3])
  assert (picture[4:6, 8:10] == 255).all()  # no sixth image


def _generate_command(workdir, real_mnist, config_flags):
  return [sys.executable, '-m', 'experiments.generate', f'--workdir={workdir}',
          '--dataset=mnist', f'--data_dir={real_mnist["data_dir"]}',
          f'--raw_data_dir={real_mnist["raw_dir"]}', '--batch_size=16', '--num_train_steps=12',
          '--checkpoint_every_steps=4', '--eval_every_steps=12', '--eval_batch_size=200',
          '--log_every_steps=4', '--keep_checkpoints=20', *config_flags]


@pytest.mark.slow
@pytest.mark.parametrize('config_flags', [
    ['--task=gan', '--model=dcgan', '--model_kwargs=width=8', '--optimizer=adam', '--momentum=0.5',
     '--learning_rate=0.0002', '--schedule=constant'],
    ['--task=diffusion', '--model=ddpm_unet',
     '--model_kwargs=base=8,channel_mults=(1,2),num_res_blocks=1,attention_resolutions=(14,)',
     '--diffusion_steps=50', '--optimizer=adam', '--learning_rate=0.001', '--ema_decay=0.9']],
    ids=['gan', 'diffusion'])
def test_generative_runs_killed_with_sigkill_resume_bit_exactly(config_flags, real_mnist, tmp_path):
  from tests.test_experiments import _env, _final, _wait_for_checkpoint
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  proc = subprocess.Popen(_generate_command(killed, real_mnist, config_flags), env=_env(),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(killed, proc, minimum_step=4)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  with open(os.path.join(killed, 'config.json')) as f:
    fit(TrainConfig.from_json(f.read()), straight)   # the uninterrupted reference, in-process
  done = subprocess.run(_generate_command(killed, real_mnist, config_flags), env=_env(),
                        cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'resumed from step' in done.stderr
  (r1, m1), (r2, m2) = _final(straight), _final(killed)
  assert {k: v for k, v in r1.items() if k not in ('train_seconds', 'images_per_second')} == \
      {k: v for k, v in r2.items() if k not in ('train_seconds', 'images_per_second')}
  assert m1 == m2  # every logged loss, step for step
  a, b = cvjax.restore(straight), cvjax.restore(killed)
  assert _max_diff(a.variables, b.variables) == 0.0
  with open(os.path.join(killed, 'config.json')) as f:
    assert json.load(f)['task'] == config_flags[0].split('=')[1]
