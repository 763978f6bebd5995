"""Running experiments many times: sweeps on this machine or on SLURM (`python -m launch.sweep`),
and their summaries (`python -m launch.summarize`). A user of the library, like experiments/."""
