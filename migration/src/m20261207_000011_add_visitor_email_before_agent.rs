//! `visitors.email_before_agent`: the visitor's current e-mail address was given before an agent
//! joined its chat (at the session's start, or while it waited). A transcript goes only to such
//! an address, so a visitor cannot have an agent's words (and its own) mailed to an address it
//! names after the fact. Decided by the statement that stores the address, so the clocks of the
//! nodes do not matter. Addresses stored before this column keep the behaviour they had.

use sea_orm_migration::{prelude::*, schema::boolean};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Visitors {
    Table,
    Email,
    EmailBeforeAgent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Visitors::Table)
                    .add_column(boolean(Visitors::EmailBeforeAgent).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(Visitors::Table)
                    .value(Visitors::EmailBeforeAgent, true)
                    .and_where(Expr::col(Visitors::Email).is_not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Visitors::Table)
                    .drop_column(Visitors::EmailBeforeAgent)
                    .to_owned(),
            )
            .await
    }
}
