"""Reading what jobs wrote, after training: a sweep's report, the Optuna search's summary, evaluating a checkpoint,
and the benchmark. Each module is a command (`python -m fashion_lenet.analysis.<module>`). May import `training`
and `sweep`; neither of them imports `analysis`.
"""
