"""The provider's ``airflow tes ...`` commands (registered through the provider info's ``cli``
entry, as the Kubernetes and Celery providers register theirs). ``definition`` names the
commands and their arguments and imports nothing heavy; each command's module is loaded when
it runs."""
