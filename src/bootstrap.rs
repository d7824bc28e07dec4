//! First start: the first account, its admin and its default group; and the token secret.

use anyhow::{Context, bail};
use chrono::Utc;
use entity::{
    accounts, agent_groups, agents,
    enums::{AgentRole, AgentStatus},
    groups,
};
use jobs::timers::GroupDefaults;
use rand::distr::{Alphanumeric, SampleString};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};

use crate::{
    auth::hash_password,
    config::Settings,
    domain::{Email, Password},
};

/// The password `given` (checked, its errors naming `source`), or a generated one (`true`).
pub fn given_or_generated(given: Option<String>, source: &str) -> anyhow::Result<(Password, bool)> {
    let (password, generated) = match given {
        Some(password) => (password, false),
        None => (Alphanumeric.sample_string(&mut rand::rng(), 20), true),
    };
    let password =
        Password::try_from(password).map_err(|err| anyhow::anyhow!("{source}: {err}"))?;
    Ok((password, generated))
}

/// Creates the first account, an admin and a default group — only when there is no account yet.
pub async fn first_account(db: &DatabaseConnection, settings: &Settings) -> anyhow::Result<()> {
    if accounts::Entity::find().one(db).await?.is_some() {
        return Ok(());
    }
    let email = Email::try_from(settings.admin_email.clone())
        .map_err(|err| anyhow::anyhow!("SWITCHBOARD_ADMIN_EMAIL: {err}"))?;
    let (password, generated) = given_or_generated(
        settings.admin_password.clone(),
        "SWITCHBOARD_ADMIN_PASSWORD",
    )?;
    let password_hash = hash_password(password.expose().to_owned()).await?;
    let (account, _admin) =
        create_account(db, &settings.account_name, &email, password_hash).await?;

    tracing::info!(account_id = account.id, email = %email.as_str(), "created the first account and its admin");
    if generated {
        // Printed once, to the terminal, never through the structured log.
        eprintln!(
            "\n  First admin created: {}\n  Generated password:  {}\n  (shown only now; set SWITCHBOARD_ADMIN_PASSWORD to choose it)\n",
            email.as_str(),
            password.expose()
        );
    }
    Ok(())
}

/// Creates an account with its admin agent and its default group ("General", with the admin in
/// it), in one transaction. Returns the account and the admin.
pub async fn create_account(
    db: &DatabaseConnection,
    name: &str,
    admin_email: &Email,
    admin_password_hash: String,
) -> anyhow::Result<(accounts::Model, agents::Model)> {
    let now = Utc::now();
    let txn = jobs::db::begin_write(db).await?;
    let account = accounts::ActiveModel {
        name: Set(name.to_owned()),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let admin = agents::ActiveModel {
        account_id: Set(account.id),
        name: Set("Administrator".into()),
        email: Set(admin_email.as_str().to_owned()),
        password_hash: Set(admin_password_hash),
        role: Set(AgentRole::Admin),
        status: Set(AgentStatus::Offline),
        accepting_chats: Set(false),
        max_concurrent_chats: Set(6),
        active_chats: Set(0),
        token_version: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let group = groups::ActiveModel {
        account_id: Set(account.id),
        name: Set("General".into()),
        description: Set(Some("Every conversation that names no group".into())),
        is_default: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        ..GroupDefaults::NEW_GROUP.row()
    }
    .insert(&txn)
    .await?;
    agent_groups::ActiveModel {
        agent_id: Set(admin.id),
        group_id: Set(group.id),
        account_id: Set(account.id),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok((account, admin))
}

/// Fewest bytes a token signing secret may have: an HS256 key much shorter than the hash can be
/// guessed, and an empty one lets anyone sign tokens.
pub const MIN_SECRET_BYTES: usize = 32;

/// The token signing secret: configured, or (embedded only) generated once and kept in the data
/// dir. A secret shorter than [`MIN_SECRET_BYTES`] (blanks at its ends not counted) refuses the
/// start, wherever it comes from.
pub fn jwt_secret(settings: &Settings) -> anyhow::Result<String> {
    if let Some(secret) = &settings.jwt_secret {
        long_enough(secret, "SWITCHBOARD_JWT_SECRET")?;
        return Ok(secret.clone());
    }
    if settings.is_distributed() {
        bail!(
            "SWITCHBOARD_JWT_SECRET is required with DATABASE_URL: every node must sign tokens \
             with the same secret"
        );
    }
    let path = settings.data_dir.join("jwt.secret");
    let stored = || -> anyhow::Result<String> {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let secret = secret.trim();
        long_enough(secret, &path.display().to_string())?;
        Ok(secret.to_owned())
    };
    if path.exists() {
        return stored();
    }
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 64);
    if crate::files::write_private(&path, secret.as_bytes())? {
        Ok(secret)
    } else {
        // Another process starting on the same data dir wrote one first: theirs is the secret.
        stored()
    }
}

fn long_enough(secret: &str, source: &str) -> anyhow::Result<()> {
    let length = secret.trim().len();
    if length < MIN_SECRET_BYTES {
        bail!(
            "the token secret in {source} is {length} bytes long; it must be at least \
             {MIN_SECRET_BYTES} (a short or empty key lets anyone forge tokens). Set \
             SWITCHBOARD_JWT_SECRET to at least {MIN_SECRET_BYTES} random characters, or (embedded) \
             delete the file so that a new secret is generated (every agent signs in again)"
        );
    }
    Ok(())
}
