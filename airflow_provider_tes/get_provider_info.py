"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_tes import __version__


def _field(label: str, type_: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "schema": {"type": [type_, "null"], **schema}, "description": description}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-tes",
        "name": "GA4GH Task Execution Service (TES)",
        "description": "Run containerised tasks on GA4GH TES servers (Funnel, TESK, Azure TES) from Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "GA4GH TES",
                "external-doc-url": "https://ga4gh.github.io/task-execution-schemas/",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.hooks.tes"]}],
        "operators": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.operators.tes"]}
        ],
        "sensors": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.sensors.tes"]}
        ],
        "triggers": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.triggers.tes"]}
        ],
        "extra-links": [
            "airflow_provider_tes.links.TesTaskLink",
            "airflow_provider_tes.links.TesOutputsLink",
        ],
        "connection-types": [
            {
                "connection-type": "tes",
                "hook-class-name": "airflow_provider_tes.hooks.tes.TesHook",
                "hook-name": "GA4GH TES",
                "conn-fields": {
                    "auth_type": _field(
                        "Auth type",
                        "string",
                        "none, basic (login/password), bearer (token below, or the password field) or "
                        "oauth2 (client credentials: client id as login, secret as password, "
                        "token URL below). "
                        "auto: basic when a login is set, bearer when only a token is.",
                        enum=["auto", "none", "basic", "bearer", "oauth2"],
                        default="auto",
                    ),
                    "token": _field(
                        "Bearer token", "string", "Static bearer token (kept secret).", format="password"
                    ),
                    "token_url": _field(
                        "OAuth2 token URL",
                        "string",
                        "Client-credentials token endpoint (auth type oauth2); "
                        "tokens are renewed before they expire.",
                    ),
                    "scope": _field("OAuth2 scope", "string", "Scope requested with oauth2 (optional)."),
                    "verify": _field(
                        "Verify TLS", "boolean", "Verify the server's TLS certificate.", default=True
                    ),
                    "ca_bundle": _field(
                        "CA bundle path", "string", "PEM file of CAs to trust for the TES URL."
                    ),
                    "timeout": _field("Timeout (s)", "number", "Per-request timeout in seconds.", default=30),
                    "retries": _field(
                        "Retries", "integer", "Retries of a failed request (jittered backoff).", default=5
                    ),
                    "max_concurrency": _field(
                        "Max concurrent requests", "integer", "Cap on simultaneous requests.", default=10
                    ),
                    "poll_interval": _field(
                        "Poll interval (s)", "number", "Default seconds between status polls.", default=5
                    ),
                    "inputs_url": _field(
                        "Inputs URL",
                        "string",
                        "Where local inputs are staged, e.g. s3://bucket/tes/inputs/",
                    ),
                    "outputs_url": _field(
                        "Outputs URL",
                        "string",
                        "Where task outputs go, e.g. s3://bucket/tes/outputs/",
                    ),
                    "aws_conn_id": _field(
                        "AWS connection id", "string", "Airflow AWS connection used to stage inputs."
                    ),
                    "task_link_template": _field(
                        "Task link template",
                        "string",
                        "URL of the 'TES Task' link; {base_url}, {origin} and {task_id} are replaced, "
                        "e.g. {origin}/tasks/{task_id} for Funnel's dashboard.",
                    ),
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "host": "TES base URL",
                        "login": "Username",
                        "password": "Password / token",
                    },
                    "placeholders": {
                        "host": "https://tes.example.org/ga4gh/tes/v1",
                        "login": "user (basic auth)",
                        "password": "password (basic) or token (bearer)",
                        "inputs_url": "s3://my-bucket/tes/inputs/",
                        "outputs_url": "s3://my-bucket/tes/outputs/",
                        "task_link_template": "{base_url}/tasks/{task_id}?view=FULL",
                    },
                },
            }
        ],
    }
