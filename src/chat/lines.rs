//! The waiting lines an agent may see (`GET /v1/queue` and the socket's `sync`).

use entity::groups;
use jobs::conversation::{groups_of_agent, waiting_line};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;

use super::{
    access::is_supervisor,
    views::{Waiting, waiting_count},
};
use crate::{auth::CurrentAgent, error::ApiError};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    group_id: i64,
    name: String,
    waiting_count: u64,
    waiting: Vec<Waiting>,
}

/// Waiting lines, one per group.
#[derive(Debug, Serialize)]
pub struct Lines {
    groups: Vec<Line>,
}

/// Longest part of each line shown.
const LINE_SHOWN: u64 = 100;

/// The waiting lines `caller` may see: its groups' (supervisors: every group of the account).
pub async fn lines_for(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
) -> Result<Lines, ApiError> {
    let mut query = groups::Entity::find()
        .filter(groups::Column::AccountId.eq(caller.account_id()))
        .filter(groups::Column::DeletedAt.is_null());
    if !is_supervisor(caller) {
        query = query.filter(groups::Column::Id.is_in(groups_of_agent(db, caller.id()).await?));
    }
    let mut lines = Vec::new();
    for group in query.order_by_asc(groups::Column::Id).all(db).await? {
        let waiting_count = waiting_count(db, group.id).await?;
        let line = waiting_line(db, group.id, LINE_SHOWN).await?;
        let waiting = Waiting::head(&line, LINE_SHOWN as usize);
        lines.push(Line {
            group_id: group.id,
            name: group.name,
            waiting_count,
            waiting,
        });
    }
    Ok(Lines { groups: lines })
}
