"""segd's inbox side: watches folders, claims complete files and enqueues jobs.

It never imports torch, sam2 or `worker`: it shares only the light `common` package (config,
names, state, queues) with the GPU side (an import contract in pyproject.toml checks it).
"""
