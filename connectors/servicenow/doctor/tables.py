"""Whether reconciliation (servicenow/va_records.py) can read what it needs: one
Table API read per table, as the integration user, asking for nothing that
exists (a chat id no chat has), so that the answer says who may read and
whether the instance knows the field, and shows no conversation."""

from typing import Dict, List

from connectors.servicenow.servicenow.http import ServiceNowHTTP, result_of
from connectors.servicenow.servicenow.va_records import INTERACTION_TABLE, MESSAGE_TABLE, READ_ROLE, TABLE_PATH, TABLES
from connectors.servicenow.doctor.findings import Finding, ok, warning
from connectors.servicenow.errors import AuthenticationFailed, ServiceNowError, ServiceNowRejected

TOPIC = "instance"
#: A client_session_id no chat has: the channel's ids are hex.
PROBE_CHAT_ID = "rasa-doctor-probe"
_PROBES: Dict[str, Dict[str, str]] = {
    INTERACTION_TABLE: {"sysparm_query": f"client_session_id={PROBE_CHAT_ID}", "sysparm_fields": "sys_id,client_session_id"},
    MESSAGE_TABLE: {"sysparm_query": "conversation=rasa-doctor-probe^direction=outbound", "sysparm_fields": "sys_id,conversation"},
}


async def check_table_access(http: ServiceNowHTTP) -> List[Finding]:
    readable: List[str] = []
    refused: List[str] = []
    found: List[Finding] = []
    for table in TABLES:
        params = {**_PROBES[table], "sysparm_limit": "1", "sysparm_no_count": "true"}
        try:
            rows = result_of(await http.request("GET", TABLE_PATH + table, params=params))
        except ServiceNowRejected as error:
            if error.status == 403 and not isinstance(error, AuthenticationFailed):
                refused.append(table)
                continue
            found.append(warning(TOPIC, f"Could not check read access to {table}: HTTP {error.status}."))
            continue
        except ServiceNowError as error:
            found.append(warning(TOPIC, f"Could not check read access to {table}: {error}."))
            continue
        readable.append(table)
        if rows:
            # The instance ignored the condition: it has no such field.
            field = "client_session_id" if table == INTERACTION_TABLE else "conversation"
            found.append(warning(
                TOPIC,
                f"{table} answered a query on {field} with a record that does not match it: this instance does not "
                "have the field, and reconciliation cannot find a chat's messages.",
                "Check the Virtual Agent API version; the interaction keeps clientSessionId only with the provider "
                "property third_party_chat=true (docs/servicenow-setup.md).",
            ))
    if refused:
        found.insert(0, warning(
            TOPIC,
            f"The integration user may not read {' and '.join(refused)} (HTTP 403): a message whose push is lost "
            "cannot be recovered, and pushes that overtake each other are shown as they arrive.",
            f"Give the integration user the {READ_ROLE} role (docs/servicenow-setup.md), or set reconcile: false "
            "to run on pushes alone.",
        ))
    elif len(readable) == len(TABLES) and not found:
        found.append(ok(TOPIC, f"Reconciliation can read {' and '.join(TABLES)}: a message whose push is lost is "
                               "recovered from ServiceNow's record."))
    return found
