"""The training core: what a job runs (data, the network and its fused form, the LightningModule, callbacks,
checkpoints, a job's life from fit to metrics.json). Imports torch and Lightning; may import `sweep`, never
`analysis`.
"""
