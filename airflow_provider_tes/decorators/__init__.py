"""TaskFlow decorators of the provider (``@task.tes``), registered as ``task-decorators``."""
