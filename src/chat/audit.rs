//! The audit trail of administrative changes: the use case every admin handler ends with.

use jobs::audit::{AuditAction, RecordAudit};

use crate::{auth::CurrentAgent, state::AppState};

/// Submits the audit record of a change the caller just committed.
///
/// The change is already durable, so a job storage outage must not fail the request: it is
/// logged (without the details, which may name people) and the record is lost.
pub async fn record(
    state: &AppState,
    caller: &CurrentAgent,
    action: AuditAction,
    subject_id: i64,
    details: serde_json::Value,
) {
    let job = RecordAudit::of(
        caller.account_id(),
        Some(caller.id()),
        action,
        Some(subject_id),
        details,
    );
    if let Err(err) = state.jobs.submit(job).await {
        let (action, subject_type) = (action.as_str(), action.subject());
        tracing::warn!(action, subject_type, subject_id, %err, "audit record not submitted");
    }
}
