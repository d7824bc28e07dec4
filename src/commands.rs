//! One-shot operator commands: `switchboard account create` and `switchboard admin
//! reset-password`. They open the database (its schema must be up to date), make the change
//! through the same use cases as the operator listener, write its audit record at once (there is
//! no worker to hand it to) and print what the operator needs.

use jobs::audit::RecordAudit;
use sea_orm::DatabaseConnection;

use crate::{
    bootstrap::given_or_generated,
    chat::accounts::{NewAccount, open_account, reset_password},
    config::{AccountTask, AdminTask, Command, Settings, Task},
    domain::{Email, Name, Password},
    startup::prepare_database,
};

/// The variable a new password is read from; never a flag, so it stays out of shell history and
/// process lists. Set it for one command only, never in `.env` (every later command would reuse
/// it, and compose hands `.env` to every container).
pub const NEW_PASSWORD: &str = "SWITCHBOARD_NEW_PASSWORD";

/// Runs a one-shot `task` (a role to play is refused: `main` starts those).
pub async fn run(settings: &Settings, task: Task) -> anyhow::Result<()> {
    match task {
        Task::Run(command) => {
            anyhow::bail!("{command:?} is a role to play, not a one-shot command")
        }
        Task::Account(AccountTask::Create { name, admin_email }) => {
            let name = Name::try_from(name).map_err(|err| anyhow::anyhow!("--name: {err}"))?;
            let admin_email = email(&admin_email, "--admin-email")?;
            let (password, generated) = new_password()?;
            let db = prepare_database(settings, Command::Serve).await?;
            let new = NewAccount {
                name,
                admin_email,
                admin_password: password.clone(),
            };
            let (account, admin, record) = open_account(&db, new, None).await?;
            println!(
                "account {} ({}) created; its admin is agent {} <{}>",
                account.id, account.name, admin.id, admin.email
            );
            tell_password(&password, generated);
            keep(record, &db).await;
            Ok(())
        }
        Task::Admin(AdminTask::ResetPassword {
            email: given,
            account_id,
        }) => {
            let email = email(&given, "--email")?;
            let (password, generated) = new_password()?;
            let db = prepare_database(settings, Command::Serve).await?;
            let (agent, record) = reset_password(&db, &email, account_id, &password).await?;
            println!(
                "agent {} <{}> of account {} has a new password; every token it held is revoked",
                agent.id, agent.email, agent.account_id
            );
            tell_password(&password, generated);
            keep(record, &db).await;
            Ok(())
        }
    }
}

/// Writes the audit record of a change already made and told: a failure is reported, but the
/// operator has what it needs (the change and its password) either way.
async fn keep(record: RecordAudit, db: &DatabaseConnection) {
    if let Err(err) = record.write(db).await {
        eprintln!("the change is made, but its audit record was not written: {err}");
    }
}

fn email(given: &str, flag: &str) -> anyhow::Result<Email> {
    Email::try_from(given.to_owned()).map_err(|err| anyhow::anyhow!("{flag}: {err}"))
}

/// The password from [`NEW_PASSWORD`], or a generated one (`true`).
fn new_password() -> anyhow::Result<(Password, bool)> {
    let given = match std::env::var(NEW_PASSWORD) {
        Ok(password) => Some(password),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{NEW_PASSWORD} is not valid UTF-8")
        }
    };
    given_or_generated(given, NEW_PASSWORD)
}

/// A generated password is printed once, to the terminal, never to the log.
fn tell_password(password: &Password, generated: bool) {
    if generated {
        println!("password: {} (shown only now)", password.expose());
    } else {
        println!("password: the one in {NEW_PASSWORD}");
    }
}
