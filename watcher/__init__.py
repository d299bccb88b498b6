"""segd's inbox side: watches folders, claims complete files and enqueues jobs.

It never imports torch: it shares only the light modules (`worker.config`, `worker.errors`)
with the GPU side.
"""
