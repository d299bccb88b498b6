"""What the watcher, the workers and the host commands share: config, errors, inbox names, job
ids, the state folder, the queue contract, job outcomes, worker liveness and the model registry.

Every module here imports only the standard library, PyYAML, pydantic, redis and rq (an import
contract in pyproject.toml checks it), so `import watcher` stays light.
"""

__version__ = "0.1.0"
