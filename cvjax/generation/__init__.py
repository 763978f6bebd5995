"""Generative-model numerics: pure functions, no I/O, no TensorFlow.

Modules: `diffusion` (β schedules, the forward process q(x_t | x_0), DDPM ancestral
and DDIM sampling), `frechet` (Fréchet distance and kernel distance between sets of
classifier features: FID and KID in whatever classifier's features one chooses) and
`elbo` (KL, likelihood and importance-weighted bound terms of a VAE, in nats).

Importing this package does no I/O and imports none of its modules.
"""
