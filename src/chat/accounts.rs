//! Accounts and their admins, for operators: the operator listener (`POST /accounts`) and the
//! command line (`switchboard account create`, `switchboard admin reset-password`) call these.
//! Each returns the audit record of its change; the caller keeps it (the listener submits a
//! job, a one-shot command writes it at once).

use entity::{accounts, agents};
use jobs::audit::{AuditAction, RecordAudit};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    auth::hash_password,
    bootstrap::create_account,
    chat::agents::revoking_tokens,
    domain::{Email, Name, Password},
};

/// A new account and its first admin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAccount {
    pub name: Name,
    pub admin_email: Email,
    pub admin_password: Password,
}

/// Creates the account, its admin and its default group in one transaction. `operator` is the
/// operator account's admin who asked (none from the command line); the record says so.
pub async fn open_account(
    db: &DatabaseConnection,
    new: NewAccount,
    operator: Option<i64>,
) -> anyhow::Result<(accounts::Model, agents::Model, RecordAudit)> {
    let hash = hash_password(new.admin_password.expose().to_owned()).await?;
    let (account, admin) = create_account(db, new.name.as_str(), &new.admin_email, hash).await?;
    let record = RecordAudit::of(
        account.id,
        None,
        AuditAction::AccountCreated,
        Some(account.id),
        json!({ "name": account.name, "adminAgentId": admin.id, "operatorAgentId": operator }),
    );
    tracing::info!(
        account_id = account.id,
        operator_agent_id = operator,
        admin_agent_id = admin.id,
        "account created"
    );
    Ok((account, admin, record))
}

/// Gives the agent with `email` (of `account_id`, needed when several accounts have one) a new
/// password and revokes every token it holds; its open sockets close at the next presence
/// heartbeat. Deleted agents are not found.
pub async fn reset_password(
    db: &DatabaseConnection,
    email: &Email,
    account_id: Option<i64>,
    password: &Password,
) -> anyhow::Result<(agents::Model, RecordAudit)> {
    let mut query = agents::Entity::find()
        .filter(agents::Column::Email.eq(email.as_str()))
        .filter(agents::Column::DeletedAt.is_null());
    if let Some(account_id) = account_id {
        query = query.filter(agents::Column::AccountId.eq(account_id));
    }
    let found = query.limit(50).all(db).await?;
    let agent = match found.as_slice() {
        [] => anyhow::bail!("no agent has the e-mail {}", email.as_str()),
        [agent] => agent.clone(),
        several => {
            let accounts: Vec<String> = several.iter().map(|a| a.account_id.to_string()).collect();
            anyhow::bail!(
                "agents of several accounts have this e-mail: name one with --account-id ({})",
                accounts.join(", ")
            )
        }
    };
    let hash = hash_password(password.expose().to_owned()).await?;
    revoking_tokens(agents::Entity::update_many())
        .col_expr(agents::Column::PasswordHash, Expr::value(hash))
        .filter(agents::Column::Id.eq(agent.id))
        .exec(db)
        .await?;
    let record = RecordAudit::of(
        agent.account_id,
        None,
        AuditAction::AgentUpdated,
        Some(agent.id),
        json!({ "changed": ["password"], "by": "reset-password" }),
    );
    tracing::info!(agent_id = agent.id, "password reset");
    Ok((agent, record))
}
