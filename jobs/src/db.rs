//! Database helpers shared by jobs and the HTTP layer.

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

/// Begins a transaction that will write.
///
/// On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`): a deferred transaction that
/// reads and then writes fails with `SQLITE_BUSY_SNAPSHOT` when another writer committed in
/// between, and the busy timeout cannot help it. PostgreSQL ignores the option.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Whether `err` says the database cannot be reached right now (down, restarting, out of
/// connections, or SQLite busy past its timeout), as opposed to refusing a statement: the caller
/// may try again shortly (HTTP 503, socket `unavailable`, a job's transient error).
pub fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(err)) => sqlx_unavailable(err),
        _ => false,
    }
}

fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08…), shutdown or start-up in progress (57P01–57P03),
        // too many connections (53300). SQLite: busy (5) or locked (6) past the busy timeout.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // SQLite's codes are numbers under five digits (PostgreSQL's have five characters),
            // often extended (517 is BUSY_SNAPSHOT): the primary code is the low byte.
            let sqlite_busy = code.len() < 5
                && code
                    .parse::<i32>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
            code.starts_with("08") || code.starts_with("57P") || code == "53300" || sqlite_busy
        }),
        _ => false,
    }
}
