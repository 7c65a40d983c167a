"""``airflow tes``: the commands and their arguments (loaded by every ``airflow`` call, so light)."""

from __future__ import annotations

from typing import Any

from airflow.cli.cli_config import ARG_OUTPUT, ActionCommand, Arg, GroupCommand, lazy_load_command

ARG_CONN_ID = Arg(
    ("--conn-id",),
    default="tes_default",
    help="The TES connection whose server is searched (default: tes_default)",
)
ARG_DAG_ID = Arg(("--dag-id",), default=None, help="Only TES tasks of this DAG")
ARG_OLDER_THAN = Arg(
    ("--older-than",),
    default="0s",
    help="Only TES tasks created longer ago than this: seconds, or a number with s, m, h or d "
    "(e.g. 30m; default 0s)",
)
ARG_YES = Arg(
    ("-y", "--yes"),
    action="store_true",
    default=False,
    help="Cancel the orphans found (without it, only list them: a dry run)",
)

CLEANUP = ActionCommand(
    name="cleanup",
    help="Find, and with --yes cancel, TES tasks that no Airflow task waits for any more",
    description=(
        "Lists the non-terminal TES tasks this deployment submitted (its deployment tag, signed "
        "with its tenant secret), maps each back to its Airflow task instance and try, and "
        "marks as orphans those whose try no longer runs, waits or retries, or whose task "
        "instance is gone. Submit-only tasks (wait_for_completion=False) are left alone while "
        "their DAG run is active. A dry run by default; --yes cancels the orphans."
    ),
    func=lazy_load_command("airflow_provider_tes.cli.cleanup.cleanup"),
    args=(ARG_CONN_ID, ARG_DAG_ID, ARG_OLDER_THAN, ARG_YES, ARG_OUTPUT),
)


def get_tes_cli_commands() -> list[Any]:
    """The provider's command group (the ``cli`` entry of its provider info)."""
    return [GroupCommand(name="tes", help="GA4GH TES provider commands", subcommands=(CLEANUP,))]
